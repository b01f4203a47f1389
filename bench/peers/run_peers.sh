#!/usr/bin/env bash
# One command for the performance comparison of issue 7:
#   bench/peers/run_peers.sh                 # full run (~7 min on 2 quiet cores with JOBS=2)
#   bench/peers/run_peers.sh --quick         # tiny sizes, 1 thread: checks the pipeline (~1 min
#                                            # after the builds)
# It
#   1. builds peft's benchmarks in Release with -march=native (PEFT_NATIVE) twice: the default
#      build (Eigen's own GEMM) and -DPEFT_USE_BLAS=ON (Eigen's products go to OpenBLAS);
#   2. picks OpenBLAS's best kernel on this CPU (OPENBLAS_CORETYPE: the environment's value, or
#      auto-detection, vs SkylakeX when the CPU has AVX-512), by timing sgemm at 1024³;
#   3. runs, at 1 and 2 threads: ours (Google Benchmark, --benchmark_format=json), OpenBLAS
#      directly (bench_core_blas: sgemm, the LoRA step's two GEMMs, the FMA peak) and PyTorch
#      (bench/peers/torch_peer.py with OMP_WAIT_POLICY=PASSIVE, tcmalloc preloaded,
#      torch.set_num_threads and OPENBLAS_NUM_THREADS / OMP_NUM_THREADS set). Ours runs under
#      the same allocator as PyTorch (tcmalloc; the llama step once more with glibc's malloc to
#      show the difference);
#   4. prints one Markdown ratio table (bench/peers/report.py), also written to
#      $OUT/peers.md, with every raw JSON file next to it.
#
# Environment knobs:
#   PEFT_PEERS_DIR        where builds and results go          (default: <repo>/build-peers)
#   JOBS                  parallel compile jobs                 (default: 1)
#   MIN_TIME              seconds per benchmark                 (default: 0.5)
#   PEFT_OPENBLAS_CORETYPE  skip the probe, use this OPENBLAS_CORETYPE for every BLAS run
#   PEFT_PEERS_NO_BLAS_BUILD=1   skip the PEFT_USE_BLAS build
#   PEFT_PEERS_NO_SVD=1   skip torch.linalg.svd at 4096² (10-30 s per thread count)
#   PEFT_PEERS_OURS_MALLOC=glibc   run ours with glibc's malloc (default: tcmalloc, as PyTorch)
#   TCMALLOC              path of libtcmalloc.so.4 (default: found with ldconfig)
# Dependencies: scripts/deps.sh (the library's) and scripts/deps_peers.sh (PyTorch, tcmalloc).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PEERS="$ROOT/bench/peers"
QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,29p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "run_peers.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done
OUT=${PEFT_PEERS_DIR:-$ROOT/build-peers}
JOBS=${JOBS:-1}
MIN_TIME=${MIN_TIME:-0.5}
RES="$OUT/results"
mkdir -p "$RES"
rm -f "$RES"/*.json "$RES"/env.txt "$RES"/torch_env.txt
PY=/usr/bin/python3
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)

say() { printf '\n== %s\n' "$*" >&2; }

# ---------------------------------------------------------------- 1. builds
TARGETS=(bench_core_matmul bench_core_blas bench_adapters_adapters bench_adapters_lora_step
         bench_nn_llama_step bench_optim_galore_step)
configure_and_build() {  # dir, extra cmake args...
  local dir=$1; shift
  cmake -S "$ROOT" -B "$dir" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DPEFT_BUILD_BENCH=ON \
    -DPEFT_BUILD_TESTS=OFF -DPEFT_BUILD_EXAMPLES=OFF -DPEFT_BUILD_TOOLS=OFF -DPEFT_NATIVE=ON \
    "$@" >"$dir.configure.log" 2>&1 || { cat "$dir.configure.log" >&2; exit 1; }
  local t=()
  for x in "${TARGETS[@]}"; do
    # bench_core_blas only exists when CMake found a BLAS with cblas.h.
    if [ "$x" = bench_core_blas ] && ! cmake --build "$dir" --target help 2>/dev/null | grep -q bench_core_blas; then
      echo "run_peers.sh: no BLAS found (install libopenblas-dev): OpenBLAS columns will be n/a" >&2
      continue
    fi
    t+=("$x")
  done
  nice -n 5 cmake --build "$dir" --target "${t[@]}" -j "$JOBS"
}
say "building peft benchmarks (Release, -march=native) in $OUT/native"
mkdir -p "$OUT/native"
configure_and_build "$OUT/native"
HAVE_BLAS_BUILD=0
if [ "${PEFT_PEERS_NO_BLAS_BUILD:-0}" != 1 ]; then
  say "building the same with -DPEFT_USE_BLAS=ON (OpenBLAS) in $OUT/blas"
  mkdir -p "$OUT/blas"
  if configure_and_build "$OUT/blas" -DPEFT_USE_BLAS=ON -DBLA_VENDOR=OpenBLAS; then
    HAVE_BLAS_BUILD=1
  else
    echo "run_peers.sh: the PEFT_USE_BLAS build failed; continuing without it" >&2
  fi
fi
BIN="$OUT/native/bench"

# ---------------------------------------------------------------- 2. OpenBLAS kernel
if [ -n "${PEFT_OPENBLAS_CORETYPE:-}" ]; then
  CORETYPE=$PEFT_OPENBLAS_CORETYPE
elif [ -x "$BIN/bench_core_blas" ]; then
  say "probing OpenBLAS kernels (sgemm 1024³, 1 thread)"
  cands=("${OPENBLAS_CORETYPE:-}")
  grep -qw avx512f /proc/cpuinfo 2>/dev/null && cands+=(SkylakeX)
  best=""; best_gf=0
  for c in "${cands[@]}"; do
    gf=$(env OPENBLAS_CORETYPE="$c" "$BIN/bench_core_blas" \
           --benchmark_filter='^BM_BlasSgemm/n:1024/threads:1/' --benchmark_format=json \
           --benchmark_min_time=0.3 2>/dev/null |
         $PY -c 'import json,sys; print(int(json.load(sys.stdin)["benchmarks"][0]["FLOPS"]/1e9))' \
         2>/dev/null || echo 0)
    echo "  OPENBLAS_CORETYPE='${c}': ${gf} GFLOP/s" >&2
    if [ "$gf" -gt "$best_gf" ]; then best=$c; best_gf=$gf; fi
  done
  CORETYPE=$best
else
  CORETYPE=${OPENBLAS_CORETYPE:-}
fi
ENV_CORETYPE=${OPENBLAS_CORETYPE:-}
if [ -n "$CORETYPE" ]; then export OPENBLAS_CORETYPE="$CORETYPE"; else unset OPENBLAS_CORETYPE; fi
echo "using OPENBLAS_CORETYPE='${CORETYPE}' (empty = OpenBLAS's own detection) for every BLAS run" >&2

# ---------------------------------------------------------------- 3a. ours + OpenBLAS
# The allocator: PyTorch's best configuration preloads tcmalloc; ours runs under the same one
# (PEFT_PEERS_OURS_MALLOC=glibc to keep glibc's malloc everywhere).
# (awk reads all of ldconfig's output: an early exit would SIGPIPE it and trip pipefail)
TCMALLOC=${TCMALLOC:-$(ldconfig -p 2>/dev/null | awk '/libtcmalloc\.so\.4 / && !p {p = $NF} END {print p}')}
OURS_PRELOAD=""
[ "${PEFT_PEERS_OURS_MALLOC:-tcmalloc}" = tcmalloc ] && OURS_PRELOAD=$TCMALLOC
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
if [ $QUICK = 1 ]; then
  F_MATMUL='BM_Matmul/n:256/threads:1/'
  F_BLAS='(BM_BlasSgemm/n:256/threads:1/|tokens:64/|FmaPeak/isa:./threads:1/)'
  F_ADAPT='BM_(LinearForward|Forward<lora_kind>|ForwardBackward<lora_kind>)/tokens:64/'
  F_STEP='tokens:64/'; F_LLAMA='dim:32/'; F_GALORE='/n:256/'
  TORCH_ARGS=(--quick); THREADS=(1)
else
  F_MATMUL='BM_Matmul/n:(1024|4096)/'
  F_BLAS='(BM_BlasSgemm/n:(1024|4096)/|tokens:512/|FmaPeak)'
  F_ADAPT='BM_(LinearForward|Forward<lora_kind>|ForwardBackward<lora_kind>)/tokens:512/in:4096/'
  F_STEP='tokens:512/'; F_LLAMA='dim:256/'; F_GALORE='/n:4096/'
  TORCH_ARGS=(); THREADS=(1 2)
fi
[ "${PEFT_PEERS_NO_SVD:-0}" = 1 ] && TORCH_ARGS+=(--no-svd)

run_bench() {  # build-tag, binary, filter [, library to preload]
  local tag=$1 bin=$2 filter=$3 preload=${4:-} name
  name=$(basename "$bin")
  [ -x "$bin" ] || { echo "run_peers.sh: $bin missing, skipped" >&2; return 0; }
  say "$tag: $name --benchmark_filter='$filter'${preload:+ (LD_PRELOAD=$preload)}"
  env ${preload:+LD_PRELOAD="$preload"} \
    "$bin" --benchmark_filter="$filter" --benchmark_min_time="$MIN_TIME" \
    --benchmark_out="$RES/${tag}_${name#bench_}.json" --benchmark_out_format=json \
    --benchmark_format=console
}
run_bench openblas_raw "$BIN/bench_core_blas" "$F_BLAS" "$OURS_PRELOAD"
[ -f "$RES/openblas_raw_core_blas.json" ] && mv "$RES/openblas_raw_core_blas.json" "$RES/openblas.json"
for tag in native blas; do
  [ $tag = blas ] && [ $HAVE_BLAS_BUILD = 0 ] && continue
  B="$OUT/$tag/bench"
  run_bench $tag "$B/bench_core_matmul" "$F_MATMUL" "$OURS_PRELOAD"
  run_bench $tag "$B/bench_adapters_adapters" "$F_ADAPT" "$OURS_PRELOAD"
  run_bench $tag "$B/bench_adapters_lora_step" "$F_STEP" "$OURS_PRELOAD"
  run_bench $tag "$B/bench_nn_llama_step" "$F_LLAMA" "$OURS_PRELOAD"
  run_bench $tag "$B/bench_optim_galore_step" "$F_GALORE" "$OURS_PRELOAD"
done

# The llama step once more under glibc's malloc (the row "… peft with glibc malloc"): glibc hands
# big freed blocks back to the OS, so every step page-faults its activations back in.
if [ -n "$OURS_PRELOAD" ]; then
  run_bench glibc "$BIN/bench_nn_llama_step" "$F_LLAMA"
fi

# ---------------------------------------------------------------- 3b. PyTorch
if ! $PY -c 'import torch' 2>/dev/null; then
  echo "run_peers.sh: /usr/bin/python3 cannot import torch (run scripts/deps_peers.sh):" \
       "PyTorch columns will be n/a" >&2
else
  [ -n "$TCMALLOC" ] || echo "run_peers.sh: tcmalloc not found (libgoogle-perftools4); PyTorch runs with glibc malloc" >&2
  for t in "${THREADS[@]}"; do
    say "PyTorch, $t thread(s)"
    env OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS="$t" OPENBLAS_NUM_THREADS="$t" \
      ${TCMALLOC:+LD_PRELOAD="$TCMALLOC"} \
      $PY "$PEERS/torch_peer.py" --threads "$t" --out "$RES/torch_t$t.json" \
      --min-time "$MIN_TIME" "${TORCH_ARGS[@]}"
  done
  # PyTorch once more with the environment's kernel when the probe picked another one: the
  # configuration a user of this machine gets (and that of the issue's reference numbers).
  if [ "$ENV_CORETYPE" != "$CORETYPE" ]; then
    printf '%s\n' "$ENV_CORETYPE" >"$RES/torch_env.txt"
    for t in "${THREADS[@]}"; do
      say "PyTorch, $t thread(s), environment's OPENBLAS_CORETYPE='$ENV_CORETYPE'"
      env OPENBLAS_CORETYPE="$ENV_CORETYPE" OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS="$t" \
        OPENBLAS_NUM_THREADS="$t" ${TCMALLOC:+LD_PRELOAD="$TCMALLOC"} \
        $PY "$PEERS/torch_peer.py" --threads "$t" --out "$RES/torch_env_t$t.json" \
        --min-time "$MIN_TIME" "${TORCH_ARGS[@]}" --no-svd
    done
  fi
fi

# ---------------------------------------------------------------- 4. the table
{
  printf '%s; %s; %s cores; load average before/after: %s / %s; OPENBLAS_CORETYPE=%s; ' \
    "$(date -u +%Y-%m-%dT%H:%MZ)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
    "$(nproc)" "${LOAD_BEFORE:-?}" "$(cut -d' ' -f1-3 /proc/loadavg)" "${CORETYPE:-auto}"
  printf 'allocator for peft: %s; ' "${OURS_PRELOAD:-glibc malloc}"
  printf 'torch %s; min time %ss per benchmark.' \
    "$($PY -c 'import torch; print(torch.__version__)' 2>/dev/null || echo n/a)" "$MIN_TIME"
} >"$RES/env.txt"
QFLAG=(); [ $QUICK = 1 ] && QFLAG=(--quick)
$PY "$PEERS/report.py" --results "$RES" --out "$OUT/peers.md" "${QFLAG[@]}"
echo >&2
echo "table: $OUT/peers.md   raw results: $RES/" >&2
