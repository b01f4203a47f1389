#!/usr/bin/env bash
# Installs what bench/peers/run_peers.sh compares against, on top of the library's packages:
# Debian's PyTorch (python3-torch 1.13, run with /usr/bin/python3), tcmalloc (libgoogle-perftools4,
# preloaded under PyTorch as its best CPU configuration) and OpenBLAS (the sgemm ceiling).
# Kept out of deps.sh's own list on purpose: PyTorch is large and only the peer comparison needs it.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/deps.sh" python3-torch libgoogle-perftools4 libopenblas-dev
