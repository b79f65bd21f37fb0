using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Design;

namespace AdapterService.Core.Storage;

/// <summary>The service's database; a subclass per provider carries that provider's migrations.</summary>
public abstract class ServiceDbContext(DbContextOptions options) : DbContext(options)
{
    /// <summary>
    /// The project whose files, jobs and adapters this context sees (set by the API for each request); null sees every
    /// project's (workers, the event relay). Another project's rows are filtered out, so their ids answer 404.
    /// </summary>
    public string? ProjectScope { get; set; }

    public DbSet<Project> Projects => Set<Project>();
    public DbSet<ApiKey> ApiKeys => Set<ApiKey>();
    public DbSet<StoredFile> Files => Set<StoredFile>();
    public DbSet<BaseModel> BaseModels => Set<BaseModel>();
    public DbSet<FineTuningJob> Jobs => Set<FineTuningJob>();
    public DbSet<JobEvent> JobEvents => Set<JobEvent>();
    public DbSet<JobMetadata> JobMetadata => Set<JobMetadata>();
    public DbSet<Adapter> Adapters => Set<Adapter>();
    public DbSet<Checkpoint> Checkpoints => Set<Checkpoint>();
    public DbSet<FileTokenCount> FileTokenCounts => Set<FileTokenCount>();
    public DbSet<WebhookEndpoint> WebhookEndpoints => Set<WebhookEndpoint>();
    public DbSet<WebhookDelivery> WebhookDeliveries => Set<WebhookDelivery>();
    public DbSet<Eval> Evals => Set<Eval>();
    public DbSet<EvalRun> EvalRuns => Set<EvalRun>();
    public DbSet<EvalOutputItem> EvalOutputItems => Set<EvalOutputItem>();

    protected override void OnModelCreating(ModelBuilder model)
    {
        model.Entity<StoredFile>().HasQueryFilter(f => ProjectScope == null || f.ProjectId == ProjectScope);
        model.Entity<FineTuningJob>().HasQueryFilter(j => ProjectScope == null || j.ProjectId == ProjectScope);
        model.Entity<Adapter>().HasQueryFilter(a => ProjectScope == null || a.ProjectId == ProjectScope);
        // Rows from before projects existed belong to the default project.
        model.Entity<StoredFile>().Property(f => f.ProjectId).HasDefaultValue(Project.DefaultId);
        model.Entity<FineTuningJob>().Property(j => j.ProjectId).HasDefaultValue(Project.DefaultId);
        // Jobs from before objectives were stored are supervised.
        model.Entity<FineTuningJob>().Property(j => j.Objective).HasDefaultValue(AdapterService.Core.Jobs.JobObjectives.Supervised);
        model.Entity<Adapter>().Property(a => a.ProjectId).HasDefaultValue(Project.DefaultId);
        model.Entity<StoredFile>().HasIndex(f => new { f.ProjectId, f.Sequence });
        model.Entity<FineTuningJob>().HasIndex(j => new { j.ProjectId, j.Status });
        model.Entity<Adapter>().HasIndex(a => a.ProjectId);
        model.Entity<Project>().HasData(new Project { Id = Project.DefaultId, Name = "Default project" });
        model.Entity<ApiKey>().HasIndex(k => k.Hash).IsUnique();
        model.Entity<ApiKey>().HasIndex(k => k.ProjectId);
        model.Entity<FineTuningJob>().HasIndex(j => j.Sequence);
        model.Entity<FineTuningJob>().HasIndex(j => j.FineTunedModel);
        model.Entity<JobEvent>().HasIndex(e => new { e.JobId, e.Id });
        model.Entity<JobMetadata>().HasKey(m => new { m.JobId, m.Key });
        model.Entity<JobMetadata>().HasIndex(m => new { m.Key, m.Value });
        model.Entity<Adapter>().HasIndex(a => a.Name).IsUnique();
        model.Entity<Checkpoint>().HasIndex(c => c.Name).IsUnique();
        model.Entity<Checkpoint>().HasIndex(c => new { c.JobId, c.StepNumber });
        model.Entity<StoredFile>().HasIndex(f => f.Sequence);
        // Deleting the file, or the base (whose id a new upload may reuse with another tokenizer), drops its counts.
        model.Entity<FileTokenCount>().HasKey(c => new { c.FileId, c.BaseModel });
        // A project sees the counts of its own files only (and EF wants the dependent of a filtered row filtered too).
        model.Entity<FileTokenCount>().HasQueryFilter(c => ProjectScope == null || Files.Any(f => f.Id == c.FileId));
        model.Entity<FileTokenCount>().HasOne<StoredFile>().WithMany().HasForeignKey(c => c.FileId).OnDelete(DeleteBehavior.Cascade);
        model.Entity<Eval>().HasQueryFilter(e => ProjectScope == null || e.ProjectId == ProjectScope);
        model.Entity<Eval>().HasIndex(e => new { e.ProjectId, e.Sequence });
        model.Entity<EvalRun>().HasQueryFilter(r => ProjectScope == null || r.ProjectId == ProjectScope);
        model.Entity<EvalRun>().HasIndex(r => new { r.EvalId, r.Sequence });
        model.Entity<EvalRun>().HasIndex(r => new { r.Status, r.Group });
        model.Entity<EvalOutputItem>().HasIndex(i => new { i.RunId, i.ItemIndex });
        model.Entity<FileTokenCount>().HasOne<BaseModel>().WithMany().HasForeignKey(c => c.BaseModel).OnDelete(DeleteBehavior.Cascade);
        // Webhooks: a project sees its own endpoints; the sender finds due deliveries by status and time, the log by endpoint.
        model.Entity<WebhookEndpoint>().HasQueryFilter(e => ProjectScope == null || e.ProjectId == ProjectScope);
        model.Entity<WebhookEndpoint>().HasIndex(e => e.ProjectId);
        model.Entity<WebhookEndpoint>().Ignore(e => e.EventList);
        model.Entity<WebhookDelivery>().HasIndex(d => new { d.Status, d.NextAttemptAt });
        model.Entity<WebhookDelivery>().HasIndex(d => new { d.EndpointId, d.CreatedAt });
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
