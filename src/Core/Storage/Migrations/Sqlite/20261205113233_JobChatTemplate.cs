using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace AdapterService.Core.Storage.Migrations.Sqlite
{
    /// <inheritdoc />
    public partial class JobChatTemplate : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<string>(
                name: "ChatTemplate",
                table: "Jobs",
                type: "TEXT",
                nullable: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "ChatTemplate",
                table: "Jobs");
        }
    }
}
