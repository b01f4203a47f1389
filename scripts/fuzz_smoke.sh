#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/<name>_fuzz.cpp -> fuzz_<name>, clang with ASan + UBSan)
# and runs each one for a short while on its committed seed corpus, tests/io/data/<name>/
# (safetensors, adapter_config, gguf, npy). Exits non-zero if a target finds a crash, an abort,
# a sanitizer report, a leak or a timeout; the input that did it is written to the build
# directory (crash-*, leak-*, timeout-*, ...).
# Usage: scripts/fuzz_smoke.sh [seconds per target]      (default 20; CI runs it with 10)
#   PEFT_FUZZ_BUILD_DIR   build directory (default build-fuzz)
#   PEFT_FUZZ_JOBS        parallel build jobs (default: nproc)
# Needs clang and its libFuzzer runtime (Debian packages `clang` and `libclang-rt-14-dev`, both
# in scripts/deps.sh: with --no-install-recommends clang does not pull the runtime in).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
secs="${1:-20}"
build="${PEFT_FUZZ_BUILD_DIR:-$root/build-fuzz}"
jobs="${PEFT_FUZZ_JOBS:-$(nproc)}"

if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -eq 0 ]; then
  echo "fuzz_smoke: seconds per target must be a positive integer, got '$secs'" >&2
  exit 2
fi
if ! command -v clang++ >/dev/null 2>&1; then
  echo "fuzz_smoke: clang++ not found (apt-get install clang libclang-rt-14-dev, or run scripts/deps.sh)" >&2
  exit 1
fi
# A clear message when the libFuzzer runtime is missing, rather than a link error deep in the build.
probe="$(mktemp -d)"
trap 'rm -rf "$probe"' EXIT
printf '#include <cstddef>\n#include <cstdint>\nextern "C" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }\n' \
  >"$probe/probe.cpp"
if ! clang++ -fsanitize=fuzzer,address,undefined "$probe/probe.cpp" -o "$probe/probe" 2>"$probe/log"; then
  echo "fuzz_smoke: clang++ cannot link a libFuzzer target (apt-get install libclang-rt-14-dev):" >&2
  cat "$probe/log" >&2
  exit 1
fi

t0=$SECONDS
cmake -S "$root/fuzz" -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$jobs"
echo "fuzz_smoke: build took $((SECONDS - t0)) s"

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
  t1=$SECONDS
  if ! "$build/fuzz_$target" -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$build/" -print_final_stats=1 "$work" "$seeds"; then
    echo "fuzz_smoke: fuzz_$target FAILED (reproducer in $build/)" >&2
    status=1
  fi
  echo "fuzz_smoke: fuzz_$target ran $((SECONDS - t1)) s"
  rm -rf "$work"
done
echo "fuzz_smoke: total $((SECONDS - t0)) s"
exit $status
