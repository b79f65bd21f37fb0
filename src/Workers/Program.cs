// The standalone worker host is for scale-out, where workers and API processes share a Hangfire storage
// (PostgreSQL) and a blob volume. Until that storage is configured, the embedded default trains inside the API process.
Console.Error.WriteLine(
    "The standalone worker needs shared Hangfire storage (scale-out), which this version does not configure yet. " +
    "Run the API (dotnet run --project src/Api): it trains jobs in-process.");
return 2;
