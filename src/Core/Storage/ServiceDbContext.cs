using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Design;

namespace AdapterService.Core.Storage;

/// <summary>The service's database; a subclass per provider carries that provider's migrations.</summary>
public abstract class ServiceDbContext(DbContextOptions options) : DbContext(options)
{
    public DbSet<StoredFile> Files => Set<StoredFile>();
    public DbSet<BaseModel> BaseModels => Set<BaseModel>();
    public DbSet<FineTuningJob> Jobs => Set<FineTuningJob>();
    public DbSet<JobEvent> JobEvents => Set<JobEvent>();
    public DbSet<JobMetadata> JobMetadata => Set<JobMetadata>();
    public DbSet<Adapter> Adapters => Set<Adapter>();
    public DbSet<Checkpoint> Checkpoints => Set<Checkpoint>();

    protected override void OnModelCreating(ModelBuilder model)
    {
        model.Entity<FineTuningJob>().HasIndex(j => j.Sequence);
        model.Entity<FineTuningJob>().HasIndex(j => j.FineTunedModel);
        model.Entity<JobEvent>().HasIndex(e => new { e.JobId, e.Id });
        model.Entity<JobMetadata>().HasKey(m => new { m.JobId, m.Key });
        model.Entity<JobMetadata>().HasIndex(m => new { m.Key, m.Value });
        model.Entity<Adapter>().HasIndex(a => a.Name).IsUnique();
        model.Entity<Checkpoint>().HasIndex(c => c.Name).IsUnique();
        model.Entity<Checkpoint>().HasIndex(c => new { c.JobId, c.StepNumber });
        model.Entity<StoredFile>().HasIndex(f => f.Sequence);
    }
}

/// <summary>The embedded default: one SQLite file.</summary>
public sealed class SqliteServiceDbContext(DbContextOptions<SqliteServiceDbContext> options) : ServiceDbContext(options);

/// <summary>Scale-out: PostgreSQL shared by API and worker processes.</summary>
public sealed class PostgresServiceDbContext(DbContextOptions<PostgresServiceDbContext> options) : ServiceDbContext(options);

/// <summary>Lets <c>dotnet ef migrations add</c> build each provider's context without a running service.</summary>
public sealed class SqliteDesignFactory : IDesignTimeDbContextFactory<SqliteServiceDbContext>
{
    public SqliteServiceDbContext CreateDbContext(string[] args) =>
        new(new DbContextOptionsBuilder<SqliteServiceDbContext>().UseSqlite("Data Source=design.db").Options);
}

public sealed class PostgresDesignFactory : IDesignTimeDbContextFactory<PostgresServiceDbContext>
{
    public PostgresServiceDbContext CreateDbContext(string[] args) =>
        new(new DbContextOptionsBuilder<PostgresServiceDbContext>().UseNpgsql("Host=localhost;Database=design").Options);
}
