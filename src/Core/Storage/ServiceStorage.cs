using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterService.Core.Storage;

public static class ServiceStorage
{
    /// <summary>
    /// The database (SQLite at <c>{data}/service.db</c> unless <c>ConnectionStrings:Database</c> says otherwise) and the
    /// blob store (<c>{data}/blobs</c>), with <c>{data}</c> from <c>Service:DataDirectory</c> (default <c>./data</c>).
    /// </summary>
    public static IServiceCollection AddServiceStorage(this IServiceCollection services, IConfiguration configuration)
    {
        var data = Path.GetFullPath(configuration["Service:DataDirectory"] ?? "data");
        Directory.CreateDirectory(data);
        switch (Provider(configuration))
        {
            case "sqlite":
                var file = configuration.GetConnectionString("Database") ?? $"Data Source={Path.Combine(data, "service.db")}";
                services.AddDbContext<ServiceDbContext, SqliteServiceDbContext>(o => o.UseSqlite(file));
                break;
            case "postgres":
                var server = configuration.GetConnectionString("Database")
                    ?? throw new InvalidOperationException("Database:Provider is postgres but ConnectionStrings:Database is not set");
                services.AddDbContext<ServiceDbContext, PostgresServiceDbContext>(o => o.UseNpgsql(server));
                break;
            case var other:
                throw new InvalidOperationException($"Database:Provider '{other}' is not one of sqlite, postgres");
        }
        services.AddSingleton<IBlobStore>(new FolderBlobStore(Path.Combine(data, "blobs")));
        return services;
    }

    /// <summary><c>Database:Provider</c>: <c>sqlite</c> (the embedded default) or <c>postgres</c> (scale-out).</summary>
    public static string Provider(IConfiguration configuration) => configuration["Database:Provider"] ?? "sqlite";

    /// <summary>Applies migrations.</summary>
    public static void Initialize(ServiceDbContext db)
    {
        db.Database.Migrate();
        // Write-ahead logging: readers never block the writer, and a crash never leaves a half-applied transaction.
        if (db.Database.IsSqlite()) db.Database.ExecuteSqlRaw("PRAGMA journal_mode=WAL;");
    }
}
