using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace AdapterService.Core.Storage.Migrations.Sqlite
{
    /// <inheritdoc />
    public partial class FileFacts : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<string>(
                name: "ImageSizes",
                table: "Files",
                type: "TEXT",
                nullable: true);

            migrationBuilder.AddColumn<string>(
                name: "Labels",
                table: "Files",
                type: "TEXT",
                nullable: true);

            migrationBuilder.CreateTable(
                name: "FileTokenCounts",
                columns: table => new
                {
                    FileId = table.Column<string>(type: "TEXT", nullable: false),
                    BaseModel = table.Column<string>(type: "TEXT", nullable: false),
                    Tokens = table.Column<long>(type: "INTEGER", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("PK_FileTokenCounts", x => new { x.FileId, x.BaseModel });
                    table.ForeignKey(
                        name: "FK_FileTokenCounts_BaseModels_BaseModel",
                        column: x => x.BaseModel,
                        principalTable: "BaseModels",
                        principalColumn: "Id",
                        onDelete: ReferentialAction.Cascade);
                    table.ForeignKey(
                        name: "FK_FileTokenCounts_Files_FileId",
                        column: x => x.FileId,
                        principalTable: "Files",
                        principalColumn: "Id",
                        onDelete: ReferentialAction.Cascade);
                });

            migrationBuilder.CreateIndex(
                name: "IX_FileTokenCounts_BaseModel",
                table: "FileTokenCounts",
                column: "BaseModel");
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropTable(
                name: "FileTokenCounts");

            migrationBuilder.DropColumn(
                name: "ImageSizes",
                table: "Files");

            migrationBuilder.DropColumn(
                name: "Labels",
                table: "Files");
        }
    }
}
