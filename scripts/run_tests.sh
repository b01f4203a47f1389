#!/usr/bin/env bash
# Builds everything (tests, benchmarks, examples) in Release in build/ and runs the test suite
# (unit tests, consumer projects, one quick run of each benchmark). Exits non-zero on any
# failure. This is exactly what CI runs (.ci/run).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/deps.sh
scripts/install_llamacpp.sh
# Ninja (scripts/deps.sh installs ninja-build) keeps both cores busy across targets; an existing
# build/ keeps the generator it was configured with.
generator=()
if [ ! -f build/CMakeCache.txt ] && command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi
cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DPEFT_REQUIRE_LLAMACPP=ON \
  -DPEFT_BUILD_TESTS=ON -DPEFT_BUILD_BENCH=ON -DPEFT_BUILD_EXAMPLES=ON
cmake --build build -j"$(nproc)"
(cd build && ctest --output-on-failure -j2)
# Each file reader's libFuzzer target for a few seconds on its committed corpus (clang, ASan, UBSan).
PEFT_FUZZ_BUILD_DIR="$root/build/fuzz" scripts/fuzz_smoke.sh 5
