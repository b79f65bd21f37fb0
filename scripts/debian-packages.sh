#!/usr/bin/env bash
# Installs the Debian packages the service uses, only those missing (a check per package, no apt when none is).
#   bash scripts/debian-packages.sh service   what `dotnet run --project src/Api` needs (its build runs this)
#   bash scripts/debian-packages.sh test      that, plus what the tests need (scripts/test.sh runs this)
# Not root and no password-less sudo: it says what to install and leaves the rest to the service's own messages.
set -euo pipefail
mode=${1:-service}

need=()
# Checked by what is used, not by package name: Node.js may come from elsewhere than Debian (NodeSource bundles npm).
# libtorch (TorchSharp) needs OpenMP's runtime; the dashboard is bundled with Node.js and npm; the built-in bases are
# pre-trained on Fashion-MNIST (the ViT) and on the fortune cookie texts (the language model) that Debian ships.
ldconfig -p | grep -q 'libgomp.so.1' || need+=(libgomp1)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
[ -f /usr/share/games/fortunes/fortunes ] || need+=(fortunes)
if [ "$mode" = test ]; then
  # The browser tests drive Debian's chromium; the scale-out tests run against a real PostgreSQL server.
  [ -x /usr/bin/chromium ] || need+=(chromium)
  # The durability test watches the service's fsync and rename calls with strace.
  command -v strace >/dev/null || need+=(strace)
  ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then sudo=""
elif [ "$mode" = test ] || sudo -n true 2>/dev/null; then sudo="sudo"
else
  echo "debian-packages.sh: missing Debian packages: ${need[*]} (run: sudo apt-get install ${need[*]})" >&2
  exit 0
fi
echo "debian-packages.sh: installing ${need[*]}"
$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
