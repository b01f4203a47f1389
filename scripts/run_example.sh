#!/usr/bin/env bash
# Builds and runs the main example: installs dependencies, configures a Release build in
# build/, builds the one example target, runs it. Extra arguments go to the example.
set -euo pipefail

# The main example (examples/${example}.cpp); PEFT_EXAMPLE=<name> runs another one.
example="${PEFT_EXAMPLE:-finetune_fashion}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DPEFT_BUILD_EXAMPLES=ON
cmake --build build --target "$example" -j"$(nproc)"
exec build/examples/"$example" "$@"
