#!/usr/bin/python3
"""Reads the Google Benchmark JSON files of one run_peers.sh run (ours, OpenBLAS, PyTorch) and
prints the ratio table as Markdown (also written to --out).

Every ratio is a ratio of wall times measured in the same run: ours / reference, lower is
better. A target "≤ x" is met when the ratio is at most x. "peft" is the default build (Eigen's
own GEMM, -march=native); "peft+BLAS" is the same code built with -DPEFT_USE_BLAS=ON (Eigen's
products go to OpenBLAS's sgemm).

  report.py --results DIR [--quick] [--out FILE.md]

DIR holds native_*.json, blas_*.json (optional), glibc_*.json (optional: the default build under
glibc's malloc when the others ran with tcmalloc), openblas.json, torch_t1.json, torch_t2.json and optionally env.txt (one line describing the run's environment, printed under the table).
"""
import argparse
import glob
import json
import os
import sys

# "real_time" (wall clock, the default) or "cpu_time": on a loaded machine the CPU time of the
# 1-thread rows is the steadier number (ours: the main thread's; PyTorch: the process's).
METRIC = "real_time"


def load(pattern):
    out = {}
    for path in sorted(glob.glob(pattern)):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            print("report.py: skipping %s: %s" % (path, e), file=sys.stderr)
            continue
        for b in data.get("benchmarks", []):
            if b.get("run_type", "iteration") != "iteration" or b.get("error_occurred"):
                continue
            name = b["name"]
            if name.endswith("/real_time"):
                name = name[: -len("/real_time")]
            scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ns")]
            b = dict(b)
            b["ms"] = float(b[METRIC]) * scale
            out[name] = b
    return out


class Table:
    def __init__(self, native, blas, openblas, torch, torch_env=None):
        self.native, self.blas, self.openblas, self.torch = native, blas, openblas, torch
        self.rows = []
        self.have_blas = bool(blas)
        # PyTorch once more on the OpenBLAS kernel of the machine's environment (when the run
        # picked another one): every torch row is repeated against it, default build only.
        self.torch_env = torch_env if torch_env and any(torch_env.values()) else None
        self.env_rows = []

    def ref(self, kind, name, t, build):
        """Reference time: from OpenBLAS, PyTorch (per thread count) or our own build."""
        if kind == "openblas":
            src = self.openblas
        elif kind == "torch":
            src = self.torch.get(t, {})
        else:  # "self": a baseline inside the same build
            src = build
        b = src.get(name)
        return b["ms"] if b else None

    def add(self, what, t, ours, ref_kind, ref_name, target=None, note="", ours_src=None):
        cells = [what, str(t)]
        builds = [self.native] + ([self.blas] if self.have_blas else [])
        for i, build in enumerate(builds):
            if ours_src is not None:  # a special run of the default build only
                o = ours_src.get(ours) if i == 0 else None
            else:
                o = build.get(ours)
            r = self.ref(ref_kind, ref_name, t, build)
            om = o["ms"] if o else None
            cells += [fmt_ms(om), fmt_ms(r), fmt_ratio(om, r, target)]
        cells.append(("≤ %.3g" % target) if target is not None else "")
        cells.append(note)
        self.rows.append(cells)
        if ref_kind == "torch" and self.torch_env is not None and ours_src is None:
            o = self.native.get(ours)
            b = self.torch_env.get(t, {}).get(ref_name)
            om, r = (o["ms"] if o else None), (b["ms"] if b else None)
            self.env_rows.append([what, str(t), fmt_ms(om), fmt_ms(r), fmt_ratio(om, r, target),
                                  ("≤ %.3g" % target) if target is not None else ""])

    def env_markdown(self):
        head = ["comparison", "thr", "peft ms", "torch ms", "peft/torch", "target"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.env_rows]
        return "\n".join(lines)

    def markdown(self):
        head = ["comparison", "thr", "peft ms", "ref ms", "peft/ref"]
        if self.have_blas:
            head += ["peft+BLAS ms", "ref ms", "peft+BLAS/ref"]
        head += ["target", "note"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for r in self.rows:
            lines.append("| " + " | ".join(r) + " |")
        return "\n".join(lines)


def fmt_ms(v):
    if v is None:
        return "n/a"
    return "%.3g" % v if v < 100 else "%.0f" % v


def fmt_ratio(a, b, target):
    if a is None or b is None or b == 0:
        return "n/a"
    r = a / b
    s = "%.2f" % r if r >= 0.1 else "%.3f" % r
    if target is not None:
        s += " ✓" if r <= target else " ✗"
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--quick", action="store_true", help="the smoke sizes of run_peers.sh --quick")
    ap.add_argument("--out", default="")
    ap.add_argument("--metric", choices=("real_time", "cpu_time"), default="real_time",
                    help="cpu_time: compare CPU times (meaningful for 1 thread only)")
    a = ap.parse_args()
    global METRIC
    METRIC = a.metric
    d = a.results
    native = load(os.path.join(d, "native_*.json"))
    blas = load(os.path.join(d, "blas_*.json"))
    openblas = load(os.path.join(d, "openblas.json"))
    glibc = load(os.path.join(d, "glibc_*.json"))  # the default build under glibc's malloc
    torch = {t: load(os.path.join(d, "torch_t%d.json" % t)) for t in (1, 2)}
    torch_env = {t: load(os.path.join(d, "torch_env_t%d.json" % t)) for t in (1, 2)}
    T = Table(native, blas, openblas, torch, torch_env)

    if a.quick:
        gemm_n, lt, lsizes, big, small = [256], 64, [256], 256, 256
        lranks, fr, llama_dim, gn, gr = [8], 8, 32, 256, 16
    else:
        gemm_n, lt, lsizes, big, small = [1024, 4096], 512, [1024, 4096], 4096, 1024
        lranks, fr, llama_dim, gn, gr = [8, 16], 16, 256, 4096, 128
    threads = [1] if a.quick else [1, 2]

    for t in threads:
        for n in gemm_n:
            T.add("matmul %d³ / OpenBLAS sgemm" % n, t, "BM_Matmul/n:%d/threads:%d" % (n, t),
                  "openblas", "BM_BlasSgemm/n:%d/threads:%d" % (n, t), 1 / 0.9,
                  "target: ≥ 0.9× OpenBLAS's speed")
        for n in gemm_n:
            T.add("matmul %d³ / torch.mm" % n, t, "BM_Matmul/n:%d/threads:%d" % (n, t),
                  "torch", "torch/mm/n:%d" % n)
    shape = "tokens:%d/in:%d/out:%d" % (lt, big, big)
    for t in threads:
        T.add("LoRA r=%d fwd / base GEMM, %d×%d×%d" % (fr, lt, big, big), t,
              "BM_Forward<lora_kind>/%s/r:%d/threads:%d" % (shape, fr, t), "self",
              "BM_LinearForward/%s/r:%d/threads:%d" % (shape, fr, t), 1.03)
        T.add("LoRA r=%d fwd+bwd / base GEMM, %d×%d×%d" % (fr, lt, big, big), t,
              "BM_ForwardBackward<lora_kind>/%s/r:%d/threads:%d" % (shape, fr, t), "self",
              "BM_LinearForward/%s/r:%d/threads:%d" % (shape, fr, t), 2.1)
        T.add("LoRA r=%d fwd / torch (HF-PEFT-style layer)" % fr, t,
              "BM_Forward<lora_kind>/%s/r:%d/threads:%d" % (shape, fr, t), "torch",
              "torch/lora_fwd/%s/r:%d" % (shape, fr))
    for t in threads:
        for d_ in lsizes:
            sh = "tokens:%d/in:%d/out:%d" % (lt, d_, d_)
            for r in lranks:
                ours = "BM_LoraStep/%s/r:%d/threads:%d" % (sh, r, t)
                if d_ == big:
                    T.add("LoRA step r=%d %d×%d×%d / OpenBLAS two GEMMs" % (r, lt, d_, d_), t,
                          ours, "openblas", "BM_BlasLinearStep/%s/threads:%d" % (sh, t), 1.1,
                          "floor: y = x·Wᵀ, dx = dy·W")
                T.add("LoRA step r=%d %d×%d×%d / torch" % (r, lt, d_, d_), t, ours, "torch",
                      "torch/lora_step/%s/r:%d" % (sh, r), 0.7 if d_ == small else None)
                T.add("LoRA step r=%d %d×%d×%d / own two GEMMs" % (r, lt, d_, d_), t, ours,
                      "self", "BM_TwoGemms/%s/threads:%d" % (sh, t), None,
                      "overhead over this build's GEMMs")
    for t in threads:
        T.add("llama LoRA step (2 layers, d=%d) / torch" % llama_dim, t,
              "BM_LlamaLoraStep/dim:%d/threads:%d" % (llama_dim, t), "torch",
              "torch/llama_lora_step/dim:%d" % llama_dim, 0.5)
        if glibc:
            T.add("llama LoRA step, peft with glibc malloc / torch", t,
                  "BM_LlamaLoraStep/dim:%d/threads:%d" % (llama_dim, t), "torch",
                  "torch/llama_lora_step/dim:%d" % llama_dim, 0.5,
                  "default build without tcmalloc", ours_src=glibc)
        T.add("llama full fine-tuning step / torch", t,
              "BM_LlamaFullStep/dim:%d/threads:%d" % (llama_dim, t), "torch",
              "torch/llama_full_step/dim:%d" % llama_dim)
    for t in threads:
        g = "n:%d/r:%d" % (gn, gr)
        T.add("GaLore refresh %d² r=%d, niter 2 / torch.svd_lowrank(niter=2)" % (gn, gr), t,
              "BM_GaloreRefresh/%s/niter:2/decay:10/threads:%d" % (g, t), "torch",
              "torch/svd_lowrank/%s/niter:2/decay:10" % g, 1 / 1.5, "target: ≥ 1.5× faster")
        T.add("GaLore refresh, niter 1 / torch.svd_lowrank(niter=2)", t,
              "BM_GaloreRefresh/%s/niter:1/decay:10/threads:%d" % (g, t), "torch",
              "torch/svd_lowrank/%s/niter:2/decay:10" % g, 1 / 1.5,
              "same energy bar, one power iteration")
        T.add("GaLore refresh, niter 2 / torch.linalg.svd", t,
              "BM_GaloreRefresh/%s/niter:2/decay:10/threads:%d" % (g, t), "torch",
              "torch/svd/n:%d/decay:10" % gn, 1 / 50, "target: ≥ 50× faster")
        T.add("GaLore-AdamW steady step %d² r=%d / torch" % (gn, gr), t,
              "BM_GaloreStep/%s/threads:%d" % (g, t), "torch", "torch/galore_step/%s" % g, 0.8)
        T.add("GaLore step floor (no W-sized temporary) / torch", t,
              "BM_GaloreStepFloor/%s/threads:%d" % (g, t), "torch", "torch/galore_step/%s" % g,
              None, "what the step could cost")

    what = "wall-time" if METRIC == "real_time" else "CPU-time"
    out = ["## peft.cpp vs PyTorch and OpenBLAS (%s ratios, lower is better)" % what, "",
           T.markdown(), ""]
    if T.env_rows:
        envk = "?"
        ef = os.path.join(d, "torch_env.txt")
        if os.path.exists(ef):
            envk = open(ef).read().strip() or "OpenBLAS's own detection"
        out += ["### PyTorch on the environment's OpenBLAS kernel (OPENBLAS_CORETYPE=%s)" % envk, "",
                "The same PyTorch rows against PyTorch run with the OpenBLAS kernel this machine's "
                "environment selects (the table above gives PyTorch the fastest kernel). peft is "
                "the default build (Eigen's own kernel, which OPENBLAS_CORETYPE does not affect).",
                "", T.env_markdown(), ""]

    # Captured energy of the GaLore bases (1 = the exact top-r subspace).
    erows = []
    for t in threads:
        for niter in (2, 1):
            for decay in (10, 5):
                key = "n:%d/r:%d/niter:%d/decay:%d" % (gn, gr, niter, decay)
                o = native.get("BM_GaloreRefresh/%s/threads:%d" % (key, t))
                p = torch.get(t, {}).get("torch/svd_lowrank/%s" % key)
                if o or p:
                    erows.append("| %d | %d | σᵢ = (i+1)^−%g | %s | %s |" % (
                        t, niter, decay / 10, "%.5f" % o["energy"] if o and "energy" in o else "n/a",
                        "%.5f" % p["energy"] if p and "energy" in p else "n/a"))
    if erows:
        out += ["### GaLore basis quality: captured energy / exact top-%d energy (target ≥ 0.99)" % gr,
                "", "| thr | niter | spectrum | peft | torch.svd_lowrank |", "|---|---|---|---|---|"]
        out += erows + [""]

    # The ceiling.
    crows = []
    for t in threads:
        peaks = {isa: openblas.get("BM_FmaPeak/isa:%d/threads:%d" % (isa, t)) for isa in (0, 1)}
        for n in gemm_n:
            ob = openblas.get("BM_BlasSgemm/n:%d/threads:%d" % (n, t))
            ours = native.get("BM_Matmul/n:%d/threads:%d" % (n, t))
            ours_b = blas.get("BM_Matmul/n:%d/threads:%d" % (n, t))

            def gf(b):
                return b["FLOPS"] / 1e9 if b and "FLOPS" in b else None

            def pct(x, isa):
                p = gf(peaks[isa])
                return "%.0f%%" % (100 * x / p) if x and p else "n/a"
            cells = [str(t), "%d³" % n]
            for v in (gf(ob), gf(ours), gf(ours_b)):
                cells.append("%.0f" % v if v else "n/a")
            cells += ["%.0f" % gf(peaks[0]) if gf(peaks[0]) else "n/a",
                      "%.0f" % gf(peaks[1]) if gf(peaks[1]) else "n/a",
                      pct(gf(ob), 0), pct(gf(ob), 1), pct(gf(ours), 1)]
            crows.append("| " + " | ".join(cells) + " |")
    if crows:
        out += ["### The machine's ceiling (GFLOP/s)", "",
                "| thr | GEMM | OpenBLAS | peft | peft+BLAS | FMA peak AVX2 | FMA peak AVX-512 | "
                "OpenBLAS % AVX2 peak | OpenBLAS % AVX-512 peak | peft % AVX-512 peak |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        out += crows + [""]

    envf = os.path.join(d, "env.txt")
    if os.path.exists(envf):
        with open(envf) as f:
            out += ["Run: " + f.read().strip(), ""]
    text = "\n".join(out)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
