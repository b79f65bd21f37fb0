using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace AdapterService.Core.Storage.Migrations.Postgres
{
    /// <inheritdoc />
    public partial class ProjectsAndApiKeys : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<string>(
                name: "ProjectId",
                table: "Jobs",
                type: "text",
                nullable: false,
                defaultValue: "proj_default");

            migrationBuilder.AddColumn<string>(
                name: "ProjectId",
                table: "Files",
                type: "text",
                nullable: false,
                defaultValue: "proj_default");

            migrationBuilder.AddColumn<string>(
                name: "ProjectId",
                table: "Adapters",
                type: "text",
                nullable: false,
                defaultValue: "proj_default");

            migrationBuilder.CreateTable(
                name: "ApiKeys",
                columns: table => new
                {
                    Id = table.Column<string>(type: "text", nullable: false),
                    ProjectId = table.Column<string>(type: "text", nullable: false),
                    Name = table.Column<string>(type: "text", nullable: false),
                    Hash = table.Column<string>(type: "text", nullable: false),
                    RedactedValue = table.Column<string>(type: "text", nullable: false),
                    CreatedAt = table.Column<long>(type: "bigint", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("PK_ApiKeys", x => x.Id);
                });

            migrationBuilder.CreateTable(
                name: "Projects",
                columns: table => new
                {
                    Id = table.Column<string>(type: "text", nullable: false),
                    Name = table.Column<string>(type: "text", nullable: false),
                    CreatedAt = table.Column<long>(type: "bigint", nullable: false)
                },
                constraints: table =>
                {
                    table.PrimaryKey("PK_Projects", x => x.Id);
                });

            migrationBuilder.InsertData(
                table: "Projects",
                columns: new[] { "Id", "CreatedAt", "Name" },
                values: new object[] { "proj_default", 0L, "Default project" });

            migrationBuilder.CreateIndex(
                name: "IX_Jobs_ProjectId_Status",
                table: "Jobs",
                columns: new[] { "ProjectId", "Status" });

            migrationBuilder.CreateIndex(
                name: "IX_Files_ProjectId_Sequence",
                table: "Files",
                columns: new[] { "ProjectId", "Sequence" });

            migrationBuilder.CreateIndex(
                name: "IX_Adapters_ProjectId",
                table: "Adapters",
                column: "ProjectId");

            migrationBuilder.CreateIndex(
                name: "IX_ApiKeys_Hash",
                table: "ApiKeys",
                column: "Hash",
                unique: true);

            migrationBuilder.CreateIndex(
                name: "IX_ApiKeys_ProjectId",
                table: "ApiKeys",
                column: "ProjectId");
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropTable(
                name: "ApiKeys");

            migrationBuilder.DropTable(
                name: "Projects");

            migrationBuilder.DropIndex(
                name: "IX_Jobs_ProjectId_Status",
                table: "Jobs");

            migrationBuilder.DropIndex(
                name: "IX_Files_ProjectId_Sequence",
                table: "Files");

            migrationBuilder.DropIndex(
                name: "IX_Adapters_ProjectId",
                table: "Adapters");

            migrationBuilder.DropColumn(
                name: "ProjectId",
                table: "Jobs");

            migrationBuilder.DropColumn(
                name: "ProjectId",
                table: "Files");

            migrationBuilder.DropColumn(
                name: "ProjectId",
                table: "Adapters");
        }
    }
}
