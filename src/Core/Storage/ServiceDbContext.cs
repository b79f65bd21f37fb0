using Microsoft.EntityFrameworkCore;

namespace AdapterService.Core.Storage;

public sealed class ServiceDbContext(DbContextOptions<ServiceDbContext> options) : DbContext(options)
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
