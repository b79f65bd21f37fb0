using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace AdapterService.Core.Storage.Migrations.Sqlite
{
    /// <inheritdoc />
    public partial class JobObjective : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<string>(
                name: "Objective",
                table: "Jobs",
                type: "TEXT",
                nullable: false,
                defaultValue: "supervised");

            migrationBuilder.AddColumn<string>(
                name: "ObjectiveSettings",
                table: "Jobs",
                type: "TEXT",
                nullable: true);

            migrationBuilder.AddColumn<string>(
                name: "StartAdapterPath",
                table: "Jobs",
                type: "TEXT",
                nullable: true);

            migrationBuilder.AddColumn<string>(
                name: "StartModel",
                table: "Jobs",
                type: "TEXT",
                nullable: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "Objective",
                table: "Jobs");

            migrationBuilder.DropColumn(
                name: "ObjectiveSettings",
                table: "Jobs");

            migrationBuilder.DropColumn(
                name: "StartAdapterPath",
                table: "Jobs");

            migrationBuilder.DropColumn(
                name: "StartModel",
                table: "Jobs");
        }
    }
}
