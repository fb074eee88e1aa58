#!/usr/bin/env python
"""Benchmark `gapcheck evaluate`'s estimators as d and the number of points grow (issue #10).

    python scripts/bench_scale.py                     # every section (about an hour on 2 cores)
    python scripts/bench_scale.py --section done      # the issue's done-when items only
    python scripts/bench_scale.py --section dims --timeout 300
    python scripts/bench_scale.py --section points
    python scripts/bench_scale.py --section rqmc      # randomized QMC vs plain Monte Carlo, 3-D

Prints Markdown tables.  Every measured run is a fresh Python process with one torch thread
running numerics.sweep.evaluate_points (the numerics of `gapcheck evaluate`, without the symbolic
predictions) with the methods named in the row; it reports wall and CPU seconds (imports
excluded: the machine is shared, CPU seconds are the steadier number) and the process's peak
resident memory (``ru_maxrss``, imports included: ~0.3 GB of it is torch and numpy).
A run that exceeds ``--timeout`` or is refused is reported as such: that is where a method
stops being usable.

Models and references (computed in another process, not timed):

- block models (numerics.blockmodels): d/2 nonlinear 2-D blocks behind a dense rotation of the
  outputs, so log p, ELBO* and the gap are sums of 2-D values that the d = 2 path computes to
  ~1e-12; "actual error" is |value − that sum|.  Standard Gaussian prior; one latent point
  z0 = uniform(−½, ½)^d (seeded) unless stated;
- the 3-D nonlinear decoder of the issue (["z1 + 0.3*tanh(z2*z3)", "z2 + 0.2*sin(z1) * z3",
  "z3 + 0.25*z1*z2"], logistic prior), built through the spec bridge as `gapcheck evaluate`
  does; its reference comes from rules independent of Gauss–Hermite (:func:`_trapezoid_reference`:
  sinh-mapped trapezoid for log p, Gaussian trapezoid for the ELBO at the optimum found).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NL3 = {
    "decoder": ["z1 + 0.3*tanh(z2*z3)", "z2 + 0.2*sin(z1) * z3", "z3 + 0.25*z1*z2"],
    "prior": "logistic",
    "latents": [[0.3, -0.5, 0.8], [-0.7, 0.2, 0.4]],
    "gamma2": [0.01, 0.1, 1, 10, 100, 1e4, 1e6, 1e9, 1e12],
}

# ----------------------------------------------------------------------------------------
# child process: one measured run
# ----------------------------------------------------------------------------------------


def _build(cfg: dict):
    """(model, points, block model or None) for a config."""
    import torch

    if cfg["model"] == "nl3":
        from proofs_check.api import load_spec
        from proofs_check.bridge import numeric_model, point_tensor

        sym = load_spec(dict(NL3), name="nl3")
        pts = [point_tensor(p, torch.device("cpu")) for p in sym.points][: cfg.get("points", 2)]
        return numeric_model(sym), pts, None
    from numerics.blockmodels import block_model

    d = cfg["d"]
    bm = block_model(d, seed=0)
    gen = torch.Generator().manual_seed(cfg.get("seed", 0))
    pts = [torch.rand(d, generator=gen, dtype=torch.float64) - 0.5 for _ in range(cfg.get("points", 1))]
    return bm.full, pts, bm


class _GaussTrapezoid:
    """Product trapezoid rule for E over N(0, I_d): nodes j·h, |j·h| ≤ 9, weights ∝ h·φ(j·h)
    (chunked like numerics.quadrature.TensorRule).  For integrands analytic in a strip its error
    falls like exp(−c/h): unlike Gauss–Hermite, it converges fast for the logistic prior at small γ²."""

    def __init__(self, h: float, d: int, T: float = 9.0) -> None:
        import numpy as np
        import torch

        x = np.arange(-T, T + h / 2, h)
        lw = -0.5 * x**2
        lw = lw - np.log(np.exp(lw).sum())
        self.d, self.k, self.size = d, len(x), len(x) ** d
        self._x, self._lw = torch.tensor(x), torch.tensor(lw)

    def chunk(self, a: int, b: int):
        import torch

        idx = torch.arange(a, min(b, self.size))
        digits = []
        for _ in range(self.d):
            digits.append(idx % self.k)
            idx = idx // self.k
        digits = torch.stack(digits[::-1], -1)
        return self._x[digits], self._lw[digits].sum(-1)


def _trapezoid_reference(model, z0, g2: float) -> dict:
    """Reference values for a small-d model by rules independent of Gauss–Hermite: log p by the
    sinh-mapped trapezoid rule in the Laplace chart (h = 0.2, 0.1), ELBO* as the ELBO at the
    tensor optimum (μ*, s*) by the Gaussian trapezoid rule (h = 0.25, 0.125; an error δ in the
    optimum changes the value by O(δ²)).  Errors: the last refinement difference."""
    import math

    import torch

    from numerics.elbo import _elbo_red_parts, _elbo_red_scaled, elbo_star
    from numerics.optimize import NodeSumObjective
    from numerics.posterior import _log_integral_chart, find_modes, sinh_trapezoid_rule

    pm = find_modes(model, model.decoder(z0)[None], [g2], z0[None])
    lps = [_log_integral_chart(model, pm[0], sinh_trapezoid_rule(h, model.d, "cpu")) for h in (0.2, 0.1)]
    st = elbo_star(model, pm)[0]
    eps = 1.0 / g2
    params = torch.cat([(st.argmax["mu"] - pm[0].modes[0]) / math.sqrt(eps), torch.log(st.argmax["s"] / eps)])[None]
    args = (pm[0].x[None], torch.tensor([eps], dtype=torch.float64), pm[0].modes[0][None])
    part, glob = _elbo_red_parts(model)
    els = []
    for h in (0.25, 0.125):
        rule = _GaussTrapezoid(h, model.d)
        obj = NodeSumObjective(lambda rule=rule: _elbo_red_scaled(model, *rule.chunk(0, rule.size)), part, glob, rule,
                               1 << 28, costs={})
        els.append(float(obj.value(params, args)[0]))
    return {"log_px": lps[-1], "elbo_star": els[-1], "log_px_err": abs(lps[1] - lps[0]), "elbo_err": abs(els[1] - els[0])}


def _child(cfg: dict) -> dict:
    import resource
    import time

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from numerics.sweep import evaluate_points

    model, pts, bm = _build(cfg)
    out: dict = {}
    if cfg.get("reference"):
        rows = []
        for z0 in pts:
            for g2 in cfg["gamma2"]:
                if bm is not None:
                    rs = [evaluate_points(m, [zb], [g2])[0] for m, zb in zip(bm.blocks, bm.split(z0))]
                    rows.append({"log_px": sum(r.reduced_log_px for r in rs), "elbo_star": sum(r.reduced_elbo_star for r in rs),
                                 "log_px_err": sum(r.log_px.error for r in rs), "elbo_err": sum(r.elbo_star.error for r in rs)})
                else:
                    rows.append(_trapezoid_reference(model, z0, g2))
        return {"rows": rows}
    if cfg.get("rqmc"):
        return _child_rqmc(cfg, model, pts)
    t0, c0 = time.perf_counter(), time.process_time()
    res = evaluate_points(model, pts, cfg["gamma2"], log_px_method=cfg["log_px"], elbo_method=cfg["elbo"],
                          is_samples=cfg.get("samples", 65536), max_memory=cfg.get("max_memory"))
    out["wall"], out["cpu"] = time.perf_counter() - t0, time.process_time() - c0
    out["rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out["rows"] = [{"gamma2": r.gamma2, "log_px": r.reduced_log_px, "elbo_star": r.reduced_elbo_star,
                    "log_px_err": r.log_px.error, "elbo_err": r.elbo_star.error, "flags": r.flags, "method": r.method,
                    "log_px_levels": r.log_px.diagnostics.get("levels", []), "elbo_levels": r.elbo_star.diagnostics["levels"]}
                   for r in res]
    return out


def _child_rqmc(cfg: dict, model, pts) -> dict:
    import time

    from numerics.montecarlo import log_marginal_is, log_marginal_rqmc
    from numerics.posterior import find_modes, log_marginal_gh

    rows = []
    z0 = pts[0]
    for g2 in cfg["gamma2"]:
        pm = find_modes(model, model.decoder(z0)[None], [g2], z0[None])[0]
        ref = log_marginal_gh(model, pm)
        for n in cfg["samples"]:
            for prop in ("laplace", "laplace_t"):
                t0 = time.process_time()
                q = log_marginal_rqmc(model, pm, n // 16, 16, seed=0, proposal=prop)
                tq = time.process_time() - t0
                t0 = time.process_time()
                mc = log_marginal_is(model, pm, n, seed=0, proposal=prop)
                tm = time.process_time() - t0
                rows.append({"gamma2": g2, "n": n, "proposal": prop, "ref": ref.value, "ref_err": ref.error,
                             "ref_conv": ref.diagnostics["converged"], "rqmc": q.value, "rqmc_se": q.error, "rqmc_cpu": tq,
                             "mc": mc.value, "mc_se": mc.error, "mc_cpu": tm})
    return {"rows": rows}


def run(cfg: dict, timeout: float) -> dict:
    """Run one config in a fresh process; {"error": ...} on refusal, failure or timeout."""
    env = dict(os.environ, GAPCHECK_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    try:
        p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)],
                           capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:g} s"}
    if p.returncode != 0:
        last = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        return {"error": (last[-1] if last else f"exit {p.returncode}")[:160]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1e}"


def _errors(res: dict, ref: dict) -> tuple[float, float, float, float, int]:
    """(max actual error, max stated error, max actual/stated, max stated error of unflagged rows,
    number of flagged rows) over log p and ELBO*."""
    act, sta, ratio, unflagged, flagged = 0.0, 0.0, 0.0, 0.0, 0
    for r, q in zip(res["rows"], ref["rows"]):
        for key, err in (("log_px", "log_px_err"), ("elbo_star", "elbo_err")):
            a = abs(r[key] - q[key])
            s = r[err] + q[err]  # the reference's own error counts on the stated side
            act, sta = max(act, a), max(sta, r[err])
            ratio = max(ratio, a / s if s > 0 else math.inf)
        conv_flags = [f for f in r["flags"] if f.endswith("not_converged")]
        flagged += bool(conv_flags)
        if not conv_flags:
            unflagged = max(unflagged, r["log_px_err"] + r["elbo_err"])
    return act, sta, ratio, unflagged, flagged


def _row(label: str, res: dict, ref: dict | None) -> str:
    if "error" in res:
        return f"| {label} | – | – | – | refused/failed: {res['error']} | | | |"
    methods = sorted({f"{r['method']['log_px']}/{r['method']['elbo_star']}" for r in res["rows"]})
    if ref is None or "error" in ref:
        nflag = sum(any(f.endswith("not_converged") for f in r["flags"]) for r in res["rows"])
        sta = max(max(r["log_px_err"], r["elbo_err"]) for r in res["rows"])
        unfl = max([r["log_px_err"] + r["elbo_err"] for r in res["rows"]
                    if not any(f.endswith("not_converged") for f in r["flags"])], default=float("nan"))
        errs = "(no reference)", _fmt(sta), "–", _fmt(unfl)
    else:
        act, sta, ratio, unfl, nflag = _errors(res, ref)
        errs = _fmt(act), _fmt(sta), f"{ratio:.2f}", _fmt(unfl)
    return (f"| {label} | {res['wall']:.1f} | {res['cpu']:.1f} | {res['rss_gb']:.2f} | {', '.join(methods)} | "
            f"{errs[0]} | {errs[1]} (max actual/stated {errs[2]}) | {errs[3]} | {nflag}/{len(res['rows'])} |")


HEADER = ("| run | wall s | CPU s | peak RSS GB | methods (log p / ELBO*) | max actual error | max stated error | "
          "max stated error, unflagged rows | rows flagged not converged |\n|---|---|---|---|---|---|---|---|---|")


def _detail(res: dict, ref: dict, what: str) -> None:
    """One table row per (point, γ²): actual errors against the reference, stated errors, levels, flags."""
    if "rows" not in res or "rows" not in ref:
        return
    for r, q in zip(res["rows"], ref["rows"]):
        print(f"|   γ² = {r['gamma2']:g} | | | | {r['method']['log_px']}/{r['method']['elbo_star']} | "
              f"log p {_fmt(abs(r['log_px'] - q['log_px']))}, ELBO* {_fmt(abs(r['elbo_star'] - q['elbo_star']))} "
              f"(reference: {what}; its errors {_fmt(q['log_px_err'])}, {_fmt(q['elbo_err'])}) | "
              f"log p {_fmt(r['log_px_err'])}, ELBO* {_fmt(r['elbo_err'])} | levels {r['log_px_levels']} / "
              f"{r['elbo_levels']} | {','.join(r['flags']) or '–'} |")


def section_done(timeout: float) -> None:
    print("## Done-when items of issue #10\n")
    print(HEADER)
    g2 = NL3["gamma2"]
    res = run({"model": "nl3", "points": 2, "gamma2": g2, "log_px": "auto", "elbo": "auto"}, timeout)
    ref = run({"model": "nl3", "points": 2, "gamma2": g2, "reference": True}, 3 * timeout)
    print(_row("3-D nonlinear, 2 points × 9 γ² (0.01…1e12), auto (reference: trapezoid rules)", res, ref))
    _detail(res, ref, "trapezoid rules")
    for d, gs in ((10, [1, 1e2, 1e4, 1e6]), (30, [1e2, 1e4, 1e6])):
        res = run({"model": "block", "d": d, "gamma2": gs, "log_px": "auto", "elbo": "auto"}, timeout)
        ref = run({"model": "block", "d": d, "gamma2": gs, "reference": True}, timeout)
        print(_row(f"{d}-D block model, γ² = {', '.join(f'{g:g}' for g in gs)}, auto (reference: exact)", res, ref))
        _detail(res, ref, "exact")
    print()


def section_dims(timeout: float) -> None:
    print(f"## Cost and accuracy vs d (block models, one point, γ² = 1e2 and 1e4; timeout {timeout:g} s)\n")
    print(HEADER)
    gs = [1e2, 1e4]
    for d in (2, 4, 6, 10, 20, 30):
        ref = run({"model": "block", "d": d, "gamma2": gs, "reference": True}, timeout)
        for lp, el in (("gh", "tensor"), ("sparse", "sparse"), ("is", "sparse"), ("auto", "auto")):
            if (lp, el) == ("auto", "auto") and d in (2,):
                continue
            res = run({"model": "block", "d": d, "gamma2": gs, "log_px": lp, "elbo": el}, timeout)
            print(_row(f"d = {d}, --log-px-method {lp} --elbo-method {el}", res, ref), flush=True)
    print()


def section_points(timeout: float) -> None:
    print(f"## Cost vs number of points (auto methods, γ² = 1e4; timeout {timeout:g} s)\n")
    print(HEADER)
    for d, counts in ((2, (1, 10, 100, 1000, 10000)), (10, (1, 2, 4, 8, 16))):
        for n in counts:
            res = run({"model": "block", "d": d, "gamma2": [1e4], "points": n, "log_px": "auto", "elbo": "auto"}, timeout)
            print(_row(f"d = {d}, {n} point(s)", res, None), flush=True)
    print()


def section_rqmc(timeout: float) -> None:
    print("## Randomized QMC vs plain Monte Carlo importance sampling (3-D nonlinear model, first point)\n")
    print("Same total draws N (RQMC: 16 scrambled replicates of N/16 Sobol points). Reference: tensor Gauss–Hermite "
          "(its stated error in the last column; not converged at γ² ≤ 1).\n")
    print("| γ² | N | proposal | RQMC actual error | RQMC SE | plain MC actual error | plain MC SE | SE ratio MC/RQMC | "
          "CPU s RQMC / MC | reference error |\n|---|---|---|---|---|---|---|---|---|---|")
    res = run({"model": "nl3", "points": 1, "gamma2": [0.01, 1, 1e2, 1e6], "samples": [1024, 16384, 262144], "rqmc": True},
              timeout)
    if "error" in res:
        print(f"| failed: {res['error']} |")
        return
    for r in res["rows"]:
        print(f"| {r['gamma2']:g} | {r['n']} | {r['proposal']} | {_fmt(abs(r['rqmc'] - r['ref']))} | {_fmt(r['rqmc_se'])} | "
              f"{_fmt(abs(r['mc'] - r['ref']))} | {_fmt(r['mc_se'])} | {r['mc_se'] / r['rqmc_se']:.1f} | "
              f"{r['rqmc_cpu']:.2f} / {r['mc_cpu']:.2f} | {_fmt(r['ref_err'])}{'' if r['ref_conv'] else ' (not converged)'} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", choices=["all", "done", "dims", "points", "rqmc"], default="all")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per measured run (default 600)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    import platform

    print(f"# bench_scale ({platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start)\n")
    for name, fn in (("done", section_done), ("dims", section_dims), ("points", section_points), ("rqmc", section_rqmc)):
        if args.section in ("all", name):
            fn(args.timeout)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
