#!/usr/bin/env bash
# Installs the Debian packages peft.cpp's build, tests, benchmarks and examples use, plus any
# packages given as arguments (scripts/deps_peers.sh adds PyTorch this way), skipping those
# already installed (apt-get runs only when something is missing). Runs as root, or through sudo
# otherwise.
set -euo pipefail

packages=(
  # toolchain and libraries
  build-essential cmake ninja-build libeigen3-dev xtensor-dev xtl-dev libxsimd-dev catch2 libbenchmark-dev
  nlohmann-json3-dev libcli11-dev zlib1g-dev libopenblas-dev libdnnl-dev gnuplot-nox
  # GNU time: peak RSS in scripts/compile_cost.sh
  time
  # fuzzing (scripts/fuzz_smoke.sh): clang and its libFuzzer/sanitizer runtimes, which clang-14
  # only recommends (libclang-common-14-dev -> Recommends: libclang-rt-14-dev)
  clang libclang-rt-14-dev
  # MPI (optional dist/ component: tests/dist mpirun tests, examples/finetune_mpi)
  libopenmpi-dev openmpi-bin
  # datasets used by the examples (see /usr/share/datasets, bible, /usr/share/dictd, jargon)
  dataset-fashion-mnist bible-kjv dict-devil jargon-text
  # extra packages from the command line
  "$@"
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps.sh: all ${#packages[@]} packages installed"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "deps.sh: missing packages (${missing[*]}) and not root; sudo is not available" >&2
  exit 1
fi

echo "deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y --no-install-recommends "${missing[@]}"
