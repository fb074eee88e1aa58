#!/usr/bin/env python
"""Benchmark the sparse-grid estimators (numerics.highdim) against exact references.

    python scripts/bench_sparse.py block --d 10 --gamma2 1,1e2,1e4,1e6
    python scripts/bench_sparse.py block --d 30 --gamma2 1e6
    python scripts/bench_sparse.py mlp3            # 3-D MLP decoder, 2 points x 9 gamma^2

Each measured run is a fresh Python process with one torch thread: it reports wall and CPU
seconds (excluding imports) and the process's peak resident memory (ru_maxrss, imports
included).  The reference is computed in another process and is not timed:

- ``block``: the d-dimensional block model of numerics.blockmodels, whose reduced log p and
  ELBO* are sums of 2-D values computed by the exact 2-D path (numerics.sweep.evaluate_points);
- ``mlp3``: the tensor Gauss–Hermite path (numerics.elbo.elbo_star, numerics.posterior.
  log_marginal_gh), one (point, γ²) at a time to keep its memory down.

Prints one Markdown table row per (point, γ²): value errors against the reference, stated
errors, convergence flags, levels.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_RUN = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, ROOT)
from numerics.posterior import find_modes
from numerics.highdim import elbo_star_sparse, log_marginal_sparse
cfg = json.loads(sys.argv[1])
model, points = build(cfg)
g2s = cfg["gamma2"]
t0, c0 = time.perf_counter(), time.process_time()
rows = []
for z0 in points:
    x = model.decoder(z0)[None].expand(len(g2s), -1)
    posts = find_modes(model, x, g2s, z0[None].expand(len(g2s), -1))
    es = elbo_star_sparse(model, posts, max_memory=cfg["max_memory"], progress=cfg.get("progress", False))
    for pm, e in zip(posts, es):
        lp = log_marginal_sparse(model, pm, max_memory=cfg["max_memory"])
        rows.append({"gamma2": pm.gamma2, "elbo": e.value, "elbo_err": e.error, "elbo_conv": e.diagnostics["converged"],
                     "elbo_levels": e.diagnostics["levels"], "logp": lp.value, "logp_err": lp.error,
                     "logp_conv": lp.diagnostics["converged"], "logp_levels": lp.diagnostics["levels"]})
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"rows": rows, "wall": wall, "cpu": cpu, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

_REF = r"""
import json, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, ROOT)
cfg = json.loads(sys.argv[1])
model, points = build(cfg)
rows = []
if cfg["kind"] == "block":
    from numerics.sweep import evaluate_points
    for z0 in points:
        for g2 in cfg["gamma2"]:
            rs = [evaluate_points(m, [zb], [g2])[0] for m, zb in zip(BM.blocks, BM.split(z0))]
            rows.append({"logp": sum(r.reduced_log_px for r in rs), "elbo": sum(r.reduced_elbo_star for r in rs),
                         "logp_err": sum(r.log_px.error for r in rs), "elbo_err": sum(r.elbo_star.error for r in rs)})
else:
    from numerics.posterior import find_modes, log_marginal_gh
    from numerics.elbo import elbo_star
    for z0 in points:
        for g2 in cfg["gamma2"]:
            pm = find_modes(model, model.decoder(z0)[None], [g2], z0[None])
            e = elbo_star(model, pm)[0]
            lp = log_marginal_gh(model, pm[0])
            rows.append({"logp": lp.value, "elbo": e.value, "logp_err": lp.error, "elbo_err": e.error})
print(json.dumps(rows))
"""

_BUILD = r"""
ROOT = {root!r}
import sys
sys.path.insert(0, ROOT)
import torch
BM = None
def build(cfg):
    global BM
    if cfg["kind"] == "block":
        from numerics.blockmodels import block_model
        BM = block_model(cfg["d"], seed=0)
        return BM.full, [torch.linspace(-0.8, 0.9, cfg["d"], dtype=torch.float64)]
    from numerics.models import Model, Prior, LogisticPrior1D, MLPDecoder
    model = Model(MLPDecoder(3, seed=0), Prior.iid(LogisticPrior1D(), 3))
    return model, [torch.tensor([0.3, -0.5, 0.7], dtype=torch.float64), torch.tensor([-1.1, 0.4, 0.2], dtype=torch.float64)]
"""


def _child(code: str, cfg: dict) -> str:
    src = _BUILD.format(root=str(ROOT)) + code
    out = subprocess.run([sys.executable, "-c", src, json.dumps(cfg)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["block", "mlp3"])
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--gamma2", default=None, help="comma-separated γ² values")
    ap.add_argument("--max-memory", type=float, default=512 * 2**20)
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()
    default = "1,1e2,1e4,1e6" if args.kind == "block" else "0.01,0.1,1,10,1e2,1e4,1e6,1e8,1e12"
    cfg = {"kind": args.kind, "d": args.d if args.kind == "block" else 3,
           "gamma2": [float(v) for v in (args.gamma2 or default).split(",")], "max_memory": int(args.max_memory)}
    run = json.loads(_child(_RUN, cfg))
    ref = None if args.no_reference else json.loads(_child(_REF, cfg))
    print(f"{args.kind} d = {cfg['d']}: wall {run['wall']:.1f} s, CPU {run['cpu']:.1f} s, peak RSS {run['rss_mb']:.0f} MB "
          f"(max_memory {cfg['max_memory'] / 2**20:.0f} MiB)\n")
    print("| γ² | ELBO* error | stated | conv | levels | log p error | stated | conv | levels |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(run["rows"]):
        ee = f"{r['elbo'] - ref[i]['elbo']:+.1e}" if ref else "–"
        le = f"{r['logp'] - ref[i]['logp']:+.1e}" if ref else "–"
        print(f"| {r['gamma2']:g} | {ee} | {r['elbo_err']:.1e} | {r['elbo_conv']} | {r['elbo_levels'][-1]} | {le} | "
              f"{r['logp_err']:.1e} | {r['logp_conv']} | {r['logp_levels'][-1]} |")
    if ref:
        worst = max(max(abs(r["elbo"] - q["elbo"]) - r["elbo_err"] - q["elbo_err"],
                        abs(r["logp"] - q["logp"]) - r["logp_err"] - q["logp_err"]) for r, q in zip(run["rows"], ref))
        print(f"\nall actual errors within the stated ones (+ the reference's): {worst <= 0}")


if __name__ == "__main__":
    main()
