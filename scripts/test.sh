#!/usr/bin/env bash
# Runs every test of the service. On a fresh Debian 12 machine it first installs what the tests need.
#   bash scripts/test.sh            the default suite (covers every feature)
#   bash scripts/test.sh --filter X passes the rest of the arguments to dotnet test
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# libtorch (TorchSharp) needs OpenMP's runtime.
ldconfig -p | grep -q 'libgomp.so.1' || need_apt+=(libgomp1)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_apt[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need_apt[@]}"
fi

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
log=$(mktemp)
status=0
dotnet test Service.sln "$@" 2>&1 | tee "$log" || status=$?
# One plain closing line for the whole run, summed over the test assemblies.
awk '/(Passed|Failed)!/ { for (i = 1; i <= NF; i++) { if ($i == "Passed:") p += $(i+1); if ($i == "Failed:") f += $(i+1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit $status
