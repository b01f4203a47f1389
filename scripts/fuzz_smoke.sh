#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/<name>_fuzz.cpp -> fuzz_<name>, clang with ASan + UBSan)
# and runs each one for a short while on its committed seed corpus, tests/io/data/<name>/
# (safetensors, adapter_config, ...). Exits non-zero if a
# target finds a crash, an abort, a sanitizer report or a leak; the input that did it is written
# to the build directory (crash-*, leak-*, ...).
# Usage: scripts/fuzz_smoke.sh [seconds per target]      (default 20)
#   PEFT_FUZZ_BUILD_DIR   build directory (default build-fuzz)
# Needs clang (Debian package `clang`, which ships libFuzzer).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
secs="${1:-20}"
build="${PEFT_FUZZ_BUILD_DIR:-$root/build-fuzz}"

if ! command -v clang++ >/dev/null 2>&1; then
  echo "fuzz_smoke: clang++ not found (apt-get install clang)" >&2
  exit 1
fi
cmake -S "$root/fuzz" -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)"

status=0
for src in "$root"/fuzz/*_fuzz.cpp; do
  target="$(basename "$src" _fuzz.cpp)"
  seeds="$root/tests/io/data/$target"
  if [ ! -d "$seeds" ]; then
    echo "fuzz_smoke: no seed corpus $seeds for fuzz_$target" >&2
    status=1
    continue
  fi
  work="$(mktemp -d)"  # new inputs go here; the committed corpus is only read
  echo "== fuzz_$target: ${secs}s on $(ls "$seeds" | wc -l) seed files"
  if ! "$build/fuzz_$target" -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$build/" -print_final_stats=1 "$work" "$seeds"; then
    echo "fuzz_smoke: fuzz_$target FAILED (reproducer in $build/)" >&2
    status=1
  fi
  rm -rf "$work"
done
exit $status
