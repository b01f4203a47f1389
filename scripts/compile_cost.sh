#!/usr/bin/env bash
# Compile cost of including peft, in each way of consuming it: CPU seconds (user + sys) and peak
# RSS of one `g++ -O2 -c` (GNU time), for
#   empty    an empty TU that includes peft/peft.hpp
#   hello    examples/hello_lora.cpp
#   typical  scripts/compile_cost/typical_program.cpp (umbrella; LoRA/PiSSA, DoRA, VeRA, AdamW,
#            GaLore; a PEFT directory saved and loaded)
# and the modes
#   header-only       peft::peft
#   compiled          with peft::compiled (-DPEFT_COMPILED_LIB; the library is built once, its
#                     own cost is the "instantiation TU" row)
#   instantiation TU  the one TU of the second way (peft/instantiate.hpp), paid once per program
# A measurement, not a timed test: run it on a quiet machine. Usage: scripts/compile_cost.sh
# [case...]; CXX, CXXFLAGS (default -O2 -fopenmp) and PEFT_COMPILE_COST_MODES override.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cxx="${CXX:-g++}"
flags=(${CXXFLAGS:--O2 -fopenmp})
inc=(-std=c++20 -I"$root/include" -I"$root/examples" -isystem /usr/include/eigen3)
timer=/usr/bin/time
[ -x "$timer" ] || { echo "compile_cost.sh: needs GNU time (Debian package time)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf '#include <peft/peft.hpp>\nint main() {}\n' > "$work/empty.cpp"
printf '#include <peft/instantiate.hpp>\n' > "$work/instantiate.cpp"

declare -A src=([empty]="$work/empty.cpp" [hello]="$root/examples/hello_lora.cpp"
                [typical]="$root/scripts/compile_cost/typical_program.cpp")
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(empty hello typical)
modes=(${PEFT_COMPILE_COST_MODES:-header-only compiled})

measure() {  # measure <file> <defines...>: prints "cpu_s peak_MB"
  local f="$1"; shift
  "$timer" -f "%U %S %M" -o "$work/t" "$cxx" "${inc[@]}" "${flags[@]}" "$@" -c "$f" -o "$work/o.o"
  awk '{printf "%.1f %.0f", $1 + $2, $3 / 1024}' "$work/t"
}

echo "compiler: $("$cxx" --version | head -1); flags: ${flags[*]}; $(nproc) cores; $(date -u +%F)"
printf '%-10s %-12s %10s %10s\n' case mode "CPU s" "peak MB"
for c in "${cases[@]}"; do
  for m in "${modes[@]}"; do
    case "$m" in
      header-only) r=$(measure "${src[$c]}") ;;
      compiled) r=$(measure "${src[$c]}" -DPEFT_COMPILED_LIB) ;;
      *) echo "unknown mode $m" >&2; exit 1 ;;
    esac
    read -r s mb <<< "$r"
    printf '%-10s %-12s %10s %10s\n' "$c" "$m" "$s" "$mb"
  done
done
r=$(measure "$work/instantiate.cpp")
read -r s mb <<< "$r"
printf '%-10s %-12s %10s %10s\n' "(once)" "inst. TU" "$s" "$mb"
