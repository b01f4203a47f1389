#!/usr/bin/python3
"""PyTorch peer of peft.cpp's benchmarks: the same operations at the same shapes.

Run with Debian's python3-torch (1.13) under the configuration run_peers.sh gives it (PyTorch's
best on a CPU): OMP_WAIT_POLICY=PASSIVE, tcmalloc preloaded, OPENBLAS_NUM_THREADS and
torch.set_num_threads both set to --threads. One process per thread count (OpenBLAS reads its
thread count when it is loaded).

Writes Google Benchmark's JSON layout (benchmarks[].name / real_time / time_unit / counters), so
bench/peers/report.py reads ours and theirs the same way. Names start with "torch/" and mirror
the C++ benchmarks' arguments:

  torch/mm/n:N                                  torch.mm, C = A·B  (bench_core_matmul BM_Matmul)
  torch/linear_fwd/tokens:T/in:I/out:O          F.linear, the frozen base GEMM
  torch/lora_fwd/tokens:T/in:I/out:O/r:R        HF-PEFT-style LoRA Linear forward (no grad)
  torch/lora_step/tokens:T/in:I/out:O/r:R       fwd + bwd (input needs grad) + AdamW on A, B
  torch/llama_lora_step/dim:256                 2-layer Llama-style model, LoRA on q/k/v/o/MLP
  torch/llama_full_step/dim:256                 the same model, full fine-tuning
  torch/svd_lowrank/n:N/r:R/niter:K/decay:D     torch.svd_lowrank(G, q=R, niter=K), counter energy
  torch/svd/n:N/decay:D                         torch.linalg.svd(G, full_matrices=False)
  torch/galore_step/n:N/r:R                     GaLore-AdamW steady step as galore_torch writes it

Usage: torch_peer.py --threads 2 --out torch_t2.json [--filter REGEX] [--min-time 0.5] [--quick]
"""
import argparse
import json
import math
import os
import platform
import re
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------- timing

def measure(fn, min_time, max_iters=1000, warmup=1):
    """Google Benchmark's rule: repeat until min_time has elapsed. Returns the mean wall time
    and the mean process CPU time (all threads) per call, and the iteration count."""
    for _ in range(warmup):
        fn()
    iters, total, cpu = 0, 0.0, 0.0
    while iters == 0 or (total < min_time and iters < max_iters):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        total += time.perf_counter() - t0
        cpu += time.process_time() - c0
        iters += 1
    return total / iters, cpu / iters, iters


# ----------------------------------------------------------------------------- models

class LoraLinear(nn.Module):
    """Hugging Face PEFT's lora.Linear forward with dropout 0: base(x) + B(A(x)) * scaling."""

    def __init__(self, base, r, alpha):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        self.scaling = alpha / r

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scaling


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    """HF LlamaAttention (1.13 era, no fused SDPA): RoPE rotate-half, causal softmax."""

    def __init__(self, dim, n_heads, max_seq, theta=10000.0):
        super().__init__()
        self.h, self.hd = n_heads, dim // n_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)
        inv = 1.0 / (theta ** (torch.arange(0, self.hd, 2).float() / self.hd))
        ang = torch.outer(torch.arange(max_seq).float(), inv)
        emb = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        mask = torch.triu(torch.ones(max_seq, max_seq, dtype=torch.bool), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        B, S, D = x.shape
        q = self.q_proj(x).view(B, S, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, S, self.h, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, S, self.h, self.hd).transpose(1, 2)
        cos, sin = self.cos[:S], self.sin[:S]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        s = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.hd)
        s = s.masked_fill(self.mask[:S, :S], torch.finfo(s.dtype).min)
        p = F.softmax(s, dim=-1)
        o = torch.matmul(p, v).transpose(1, 2).reshape(B, S, D)
        return self.o_proj(o)


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, dim, n_heads, hidden, max_seq, eps):
        super().__init__()
        self.self_attn = Attention(dim, n_heads, max_seq)
        self.mlp = MLP(dim, hidden)
        self.input_layernorm = RMSNorm(dim, eps)
        self.post_attention_layernorm = RMSNorm(dim, eps)

    def forward(self, x):
        h = x + self.self_attn(self.input_layernorm(x))
        return h + self.mlp(self.post_attention_layernorm(h))


class Llama(nn.Module):
    def __init__(self, vocab, dim, n_layers, n_heads, hidden, max_seq, eps=1e-6):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(
            [Block(dim, n_heads, hidden, max_seq, eps) for _ in range(n_layers)])
        self.norm = RMSNorm(dim, eps)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids):
        h = self.embed_tokens(ids)
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(self.norm(h))


def inject_lora(model, r, alpha, targets):
    for p in model.parameters():
        p.requires_grad_(False)
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                lora = LoraLinear(child, r, alpha)
                nn.init.kaiming_uniform_(lora.lora_A.weight, a=math.sqrt(5))
                nn.init.zeros_(lora.lora_B.weight)
                setattr(mod, child_name, lora)


# ----------------------------------------------------------------------------- benchmarks

def decaying_matrix(n, decay, gen):
    """G = U·diag(σ)·Vᵀ, σ_i = (i+1)^(−decay/10), U and V random orthogonal (as the C++ bench)."""
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=gen))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=gen))
    s = torch.arange(1, n + 1, dtype=torch.float64).pow(-decay / 10.0).float()
    return (U * s) @ V.T, s


class Runner:
    def __init__(self, args):
        self.args = args
        self.filter = re.compile(args.filter) if args.filter else None
        self.results = []
        self.gen = torch.Generator().manual_seed(0)

    def wanted(self, name):
        return self.filter is None or self.filter.search(name) is not None

    def add(self, name, fn, flops=None, counters=None, min_time=None, max_iters=1000, warmup=1):
        if not self.wanted(name):
            return
        sec, cpu, iters = measure(fn, self.args.min_time if min_time is None else min_time,
                                  max_iters, warmup)
        entry = {"name": name, "run_name": name, "run_type": "iteration", "iterations": iters,
                 "real_time": sec * 1e3, "cpu_time": cpu * 1e3, "time_unit": "ms"}
        if flops:
            entry["FLOPS"] = flops / sec
        entry.update(counters or {})
        self.results.append(entry)
        extra = "".join(" %s=%.6g" % (k, v) for k, v in (counters or {}).items())
        print("%-58s %10.3f ms %10.3f ms cpu %6d%s" % (name, sec * 1e3, cpu * 1e3, iters, extra),
              flush=True)

    def randn(self, *shape):
        return torch.randn(*shape, generator=self.gen)

    # -- GEMM
    def mm(self):
        for n in ([256] if self.args.quick else [1024, 4096]):
            name = "torch/mm/n:%d" % n
            if not self.wanted(name):
                continue
            a, b = self.randn(n, n), self.randn(n, n)
            self.add(name, lambda: torch.mm(a, b), 2.0 * n ** 3)

    # -- a LoRA layer
    def lora(self):
        shapes = [(64, 256, 8)] if self.args.quick else [(512, 1024, 8), (512, 1024, 16),
                                                        (512, 4096, 8), (512, 4096, 16)]
        for tokens, d, r in shapes:
            base = nn.Linear(d, d, bias=False)
            nn.init.normal_(base.weight, std=0.02)
            base.weight.requires_grad_(False)
            layer = LoraLinear(base, r, 2.0 * r)
            nn.init.normal_(layer.lora_A.weight, std=0.02)
            nn.init.normal_(layer.lora_B.weight, std=0.02)
            x = self.randn(tokens, d).requires_grad_(True)
            dy = self.randn(tokens, d)
            flops2 = 4.0 * tokens * d * d
            tag = "tokens:%d/in:%d/out:%d" % (tokens, d, d)
            if r == 16 or self.args.quick:
                with torch.no_grad():
                    self.add("torch/linear_fwd/" + tag, lambda: F.linear(x, base.weight),
                             flops2 / 2)
                    self.add("torch/lora_fwd/%s/r:%d" % (tag, r), lambda: layer(x), flops2 / 2)
            opt = torch.optim.AdamW([layer.lora_A.weight, layer.lora_B.weight], lr=1e-3,
                                    weight_decay=1e-2)

            def step():
                y = layer(x)
                y.backward(dy)
                opt.step()
                opt.zero_grad(set_to_none=True)
                x.grad = None
            self.add("torch/lora_step/%s/r:%d" % (tag, r), step, flops2)

    # -- the small Llama-style model
    def llama(self):
        if self.args.quick:
            dim, vocab, heads, hidden, batch, seq = 32, 64, 2, 64, 2, 16
        else:
            dim, vocab, heads, hidden, batch, seq = 256, 4096, 4, 768, 8, 128
        ids = torch.randint(0, vocab, (batch, seq), generator=self.gen)
        targets = torch.randint(0, vocab, (batch * seq,), generator=self.gen)
        for kind in ("lora", "full"):
            name = "torch/llama_%s_step/dim:%d" % (kind, dim)
            if not self.wanted(name):
                continue
            torch.manual_seed(1)
            model = Llama(vocab, dim, 2, heads, hidden, seq)
            if kind == "lora":
                inject_lora(model, 8, 16.0,
                            {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                             "down_proj"})
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)

            def step():
                logits = model(ids)
                loss = F.cross_entropy(logits.view(-1, vocab), targets)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            self.add(name, step, counters={"trainable": float(sum(p.numel() for p in params)),
                                           "tokens": float(batch * seq)})

    # -- GaLore: basis refresh and the steady step
    def galore(self):
        n, r = (256, 16) if self.args.quick else (4096, 128)
        cases = [(2, 10), (1, 10)] if not self.args.quick else [(2, 10)]
        if not self.args.quick:
            cases += [(2, 5), (1, 5)]
        mats = {}
        for niter, decay in cases:
            name = "torch/svd_lowrank/n:%d/r:%d/niter:%d/decay:%d" % (n, r, niter, decay)
            if not self.wanted(name):
                continue
            if decay not in mats:
                mats[decay] = decaying_matrix(n, decay, self.gen)
            G, s = mats[decay]
            box = {}

            def refresh():
                box["V"] = torch.svd_lowrank(G, q=r, niter=niter)[2]
            sec_min = self.args.min_time
            self.add(name, refresh, min_time=sec_min, counters={})
            if self.results and self.results[-1]["name"] == name:
                V = box["V"][:, :r]
                captured = float((G @ V).pow(2).sum())
                exact = float(s[:r].double().pow(2).sum())
                self.results[-1]["energy"] = captured / exact
                print("%58s energy=%.6f" % ("", captured / exact), flush=True)
        name = "torch/svd/n:%d/decay:10" % n
        if self.wanted(name) and not self.args.no_svd:
            if 10 not in mats:
                mats[10] = decaying_matrix(n, 10, self.gen)
            G = mats[10][0]
            self.add(name, lambda: torch.linalg.svd(G, full_matrices=False), min_time=0.0,
                     max_iters=1, warmup=0)

        name = "torch/galore_step/n:%d/r:%d" % (n, r)
        if self.wanted(name):
            lr, b1, b2, eps, wd, scale = 1e-3, 0.9, 0.999, 1e-8, 1e-2, 0.25
            p = self.randn(n, n)
            grad = self.randn(n, n)
            Q, _ = torch.linalg.qr(self.randn(n, r))
            exp_avg = torch.zeros(n, r)
            exp_avg_sq = torch.zeros(n, r)
            state = {"t": 0}

            # galore_torch.AdamW's step for a right-projected [n, n] weight (project, Adam on the
            # low-rank gradient, project_back·scale, p.add_(-step_size)), with torch.optim.AdamW's
            # decoupled decay before the update, as peft's projected<adamw>.
            @torch.no_grad()
            def step():
                state["t"] += 1
                t = state["t"]
                low = grad @ Q
                exp_avg.lerp_(low, 1 - b1)
                exp_avg_sq.mul_(b2).addcmul_(low, low, value=1 - b2)
                bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
                denom = (exp_avg_sq.sqrt() / math.sqrt(bc2)).add_(eps)
                norm_grad = (exp_avg / denom) @ Q.T * scale
                p.mul_(1 - lr * wd)
                p.add_(norm_grad, alpha=-lr / bc1)
            self.add(name, step, 4.0 * n * n * r)

    def run(self):
        for part in (self.mm, self.lora, self.llama, self.galore):
            part()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--filter", default="", help="regex on benchmark names")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per benchmark")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--no-svd", action="store_true", help="skip torch.linalg.svd (seconds)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    env = {k: os.environ.get(k, "") for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                                              "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
                                              "LD_PRELOAD")}
    print("torch %s, %d threads, %s" % (torch.__version__, torch.get_num_threads(),
                                        " ".join("%s=%s" % kv for kv in env.items())), flush=True)
    r = Runner(args)
    r.run()
    out = {"context": {"executable": "torch_peer.py", "torch": torch.__version__,
                       "threads": args.threads, "python": platform.python_version(),
                       "host_name": platform.node(), "env": env,
                       "load_avg": list(os.getloadavg())},
           "benchmarks": r.results}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
