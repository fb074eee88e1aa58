#!/usr/bin/env python
"""Benchmark `gapcheck evaluate` (in-process) and compare it with an SVI-style alternative.

    python scripts/bench_evaluate.py [--spec examples/triangular.toml] [--repeats 5]

Part 1 times :func:`proofs_check.evaluation.evaluate_spec` after every import, as
`gapcheck evaluate SPEC` runs it, each configuration in a fresh Python process: the import
time, the first ("cold") call — what one `gapcheck evaluate` invocation pays, including
torch.func's one-time lazy initialization and, with predictions, the symbolic derivation —
and the median of ``--repeats`` further ("warm") calls in the same process; with and without
the symbolic predictions (``--no-prediction``), with torch's default intra-op thread count and
with one thread.

Part 2 is what a user without gapcheck would do for the same (z0, γ²) items: maximize a
reparameterized Monte Carlo ELBO over (μ, log s) with torch.optim.Adam (float64, batched over
all items, seeded, prior-centred start μ = 0, s = 1; once with a constant learning rate and
once constant for half the steps, then decaying exponentially), estimate the final ELBO with a large MC sample, and
log p with an importance-weighted bound (IWAE, K samples from the final q).  It reports the
wall time per item and the errors against gapcheck's deterministic values.

Prints Markdown tables; docs/performance.md records one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proofs_check.bridge import numeric_model, point_tensor  # noqa: E402
from proofs_check.evaluation import evaluate_spec  # noqa: E402
from theory.spec import load_spec  # noqa: E402

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from proofs_check.evaluation import evaluate_spec
from theory.spec import load_spec
t_import = time.perf_counter() - t0
spec, repeats, pred, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
if threads:
    torch.set_num_threads(threads)
sym = load_spec(spec)
t0 = time.perf_counter()
evaluate_spec(sym, device="cpu", predictions=pred)
cold = time.perf_counter() - t0
warm = []
for _ in range(repeats):
    t0 = time.perf_counter()
    evaluate_spec(sym, device="cpu", predictions=pred)
    warm.append(time.perf_counter() - t0)
print(json.dumps({"import": t_import, "cold": cold, "warm": warm, "threads": torch.get_num_threads()}))
"""


def _time_evaluate(spec: str, repeats: int, predictions: bool, threads: int) -> dict:
    """Time evaluate_spec in a fresh interpreter (threads = 0: torch's default)."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, spec, str(repeats), "1" if predictions else "0", str(threads)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _svi(sym, results, steps: int, samples: int, lr: float, lr_end: float | None, iwae_k: int, final_mc: int, seed: int) -> dict:
    """Adam on a reparameterized MC ELBO for all items at once, then MC ELBO + IWAE log p."""
    model = numeric_model(sym)
    d, n = model.d, model.n
    Z0 = torch.stack([point_tensor(p) for p in sym.points])
    items = [(i, g2) for i in range(len(sym.points)) for g2 in sym.gamma2]
    X = model.decoder(Z0)[[i for i, _ in items]]  # (B, n)
    G = torch.tensor([g for _, g in items], dtype=torch.float64)  # (B,)
    B = len(items)
    log_norm = 0.5 * n * torch.log(G / (2 * math.pi))  # the n/2 log(γ²/2π) of log p(x|z)

    def log_joint_full(z):  # z: (S, B, d) -> log p0(z) + log p(x|z), (S, B)
        r = X - model.decoder(z)
        return -0.5 * G * (r * r).sum(-1) + model.prior.log_prob(z) + log_norm

    gen = torch.Generator().manual_seed(seed)
    mu = torch.zeros(B, d, dtype=torch.float64, requires_grad=True)
    logs = torch.zeros(B, d, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([mu, logs], lr=lr)
    sched = None
    if lr_end is not None:  # constant lr for the first half, then exponential decay to lr_end
        half = steps // 2
        rate = (lr_end / lr) ** (1.0 / max(steps - half, 1))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 if t < half else rate ** (t - half))
    t0 = time.perf_counter()
    for _ in range(steps):
        xi = torch.randn(samples, B, d, generator=gen, dtype=torch.float64)
        z = mu + torch.exp(0.5 * logs) * xi
        elbo = log_joint_full(z).mean(0) + 0.5 * (logs + math.log(2 * math.pi * math.e)).sum(-1)
        opt.zero_grad()
        (-elbo.sum()).backward()
        opt.step()
        if sched is not None:
            sched.step()
    t_opt = time.perf_counter() - t0
    with torch.no_grad():
        t0 = time.perf_counter()
        sd = torch.exp(0.5 * logs)
        xi = torch.randn(final_mc, B, d, generator=gen, dtype=torch.float64)
        h = log_joint_full(mu + sd * xi)
        ent = 0.5 * (logs + math.log(2 * math.pi * math.e)).sum(-1)
        elbo_hat = h.mean(0) + ent
        elbo_se = h.std(0) / math.sqrt(final_mc)
        xi = torch.randn(iwae_k, B, d, generator=gen, dtype=torch.float64)
        z = mu + sd * xi
        log_q = (-0.5 * xi * xi - 0.5 * math.log(2 * math.pi)).sum(-1) - 0.5 * logs.sum(-1)
        logw = log_joint_full(z) - log_q
        iwae = torch.logsumexp(logw, 0) - math.log(iwae_k)
        t_eval = time.perf_counter() - t0
    rows = []
    for b, (i, g2) in enumerate(items):
        r = next(r for r in results if r.gamma2 == g2 and [float(v) for v in r.latent] == Z0[i].tolist())
        rows.append({
            "latent": Z0[i].tolist(), "gamma2": g2,
            "err_log_px": float(iwae[b]) - r.log_px.value,
            "err_elbo": float(elbo_hat[b]) - r.elbo_star.value,
            "elbo_se": float(elbo_se[b]),
            "err_gap": (float(iwae[b]) - float(elbo_hat[b])) - r.gap.value,
            "gap": r.gap.value,
        })
    return {"rows": rows, "t_opt": t_opt, "t_eval": t_eval, "B": B}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "examples" / "triangular.toml"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--svi-steps", type=int, default=3000)
    ap.add_argument("--svi-samples", type=int, default=64)
    ap.add_argument("--svi-lr", type=float, default=0.05)
    ap.add_argument("--svi-lr-end", type=float, default=1e-6)
    ap.add_argument("--iwae-k", type=int, default=1000)
    ap.add_argument("--final-mc", type=int, default=2**16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-svi", action="store_true")
    args = ap.parse_args(argv)

    sym = load_spec(args.spec)
    n_items = len(sym.points) * len(sym.gamma2)
    print(f"# gapcheck evaluate benchmark: {Path(args.spec).name} (d = {sym.d}, n = {sym.n}, "
          f"{len(sym.points)} points × {len(sym.gamma2)} γ² = {n_items} items)\n")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}; "
          f"Python {platform.python_version()}, torch {torch.__version__}, default intra-op threads "
          f"{torch.get_num_threads()}")
    print(f"- load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")

    configs = [(True, 0), (False, 0), (True, 1), (False, 1)]
    print("| predictions | intra-op threads | import (s) | cold call (s) | warm median (s) | warm min–max (s) |")
    print("|---|---|---|---|---|---|")
    for pred, thr in configs:
        out = _time_evaluate(args.spec, args.repeats, pred, thr)
        w = out["warm"]
        print(f"| {'yes' if pred else 'no'} | {out['threads']}{' (default)' if thr == 0 else ''} | {out['import']:.2f} | "
              f"{out['cold']:.2f} | {statistics.median(w):.2f} | {min(w):.2f}–{max(w):.2f} |")
    print(f"\n- load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("- each row is a fresh interpreter; 'cold' is its first evaluate_spec call (what one "
          "`gapcheck evaluate` run pays after import), 'warm' the median of the next "
          f"{args.repeats} calls.\n")

    if args.skip_svi:
        return 0
    res = evaluate_spec(sym, device="cpu", predictions=False).results
    for lr_end, label in [(None, "constant learning rate"), (args.svi_lr_end, f"learning rate constant for half the steps, then decayed exponentially to {args.svi_lr_end:g}")]:
        _report_svi(sym, res, args, lr_end, label)
    return 0


def _report_svi(sym, res, args, lr_end, label) -> None:
    svi = _svi(sym, res, args.svi_steps, args.svi_samples, args.svi_lr, lr_end, args.iwae_k, args.final_mc, args.seed)
    B = svi["B"]
    print(f"## SVI-style alternative, {label}: Adam (lr {args.svi_lr}, {args.svi_steps} steps, {args.svi_samples} "
          f"reparameterized samples, batched over {B} items), final ELBO by MC (N = {args.final_mc}), "
          f"log p by IWAE (K = {args.iwae_k})\n")
    print(f"- wall time: optimization {svi['t_opt']:.2f} s + final estimates {svi['t_eval']:.2f} s for {B} items "
          f"= {(svi['t_opt'] + svi['t_eval']) / B:.3f} s per item (default threads)\n")
    print("| latent z0 | γ² | gap (gapcheck) | SVI error log p (IWAE) | SVI error ELBO* | MC s.e. of final ELBO | SVI error gap |")
    print("|---|---|---|---|---|---|---|")
    for r in svi["rows"]:
        z = "(" + ", ".join(f"{v:.3g}" for v in r.latent) + ")"
        print(f"| {z} | {r['gamma2']:.0e} | {r['gap']:.6f} | {r['err_log_px']:+.2e} | {r['err_elbo']:+.2e} | "
              f"{r['elbo_se']:.1e} | {r['err_gap']:+.2e} |")
    for key, what in [("err_log_px", "log p"), ("err_elbo", "ELBO*"), ("err_gap", "gap")]:
        errs = [abs(r[key]) for r in svi["rows"]]
        print(f"\n- SVI |error| in {what}: median {statistics.median(errs):.2e}, max {max(errs):.2e}", end="")
    print("\n")


if __name__ == "__main__":
    raise SystemExit(main())
