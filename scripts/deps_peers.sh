#!/usr/bin/env bash
# Installs what bench/peers/run_peers.sh compares against, on top of scripts/deps.sh: Debian's
# PyTorch (python3-torch 1.13, run with /usr/bin/python3), tcmalloc (libgoogle-perftools4,
# preloaded under PyTorch as its best CPU configuration) and OpenBLAS (the sgemm ceiling).
# Kept out of deps.sh on purpose: PyTorch is large and only the peer comparison needs it.
# Skips what is installed; runs as root, or through sudo otherwise.
set -euo pipefail

packages=(python3-torch libgoogle-perftools4 libopenblas-dev)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps_peers.sh: all ${#packages[@]} packages installed"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "deps_peers.sh: missing packages (${missing[*]}) and not root; sudo is not available" >&2
  exit 1
fi

echo "deps_peers.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update
# sudo drops the environment: pass the frontend explicitly.
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y --no-install-recommends "${missing[@]}"
