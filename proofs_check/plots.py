"""Figures of `gapcheck verify` (PNG and SVG), in the spirit of the paper's figures but with
exact values and error bars.  Only the figures of the claims that were run are drawn:

- ``gap`` (C11, C12, C13): log p_γ(x) − ELBO*(x) (→ c_IMA(f, z0)) and L_IMA(x) − ELBO*(x)
  (→ 0) against log10 γ², and |L_IMA − ELBO*| on log–log axes with a slope −1 guide
  (O(γ⁻²)) and the numerical error estimate, for a non-IMA (triangular) and an IMA-class
  (ima) decoder.  When C13 ran, its own Monte Carlo estimate of the prior average
  E_{z0∼p0}[log p_γ − ELBO*] (mean ± standard error at each γ²) and of C_IMA(f, p0) (± its
  standard error) is drawn beside the single-point curves; nothing is re-estimated here.
- ``self_consistency`` (C7, C8): ‖μ* − z0‖ and ‖f(μ*) − x‖ against γ² with a slope −1
  guide (C7), and γ² s_k* ‖J_k(z0)‖² → 1 against log10 γ² (C8), one panel per model.
- ``orders`` (every check with a fitted order): the observed order of accuracy ± 3 standard
  errors against the pass band theory_order ± tolerance of that check; failing rows marked.

The ``*_figure`` functions return the matplotlib Figure (inspectable by tests);
:func:`make_figures` saves them and reports progress.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from numerics.jacobian import jacobian

from .bridge import point_tensor
from .context import Context

#: Claims whose presence in a report triggers each figure.
GAP_CLAIMS = ("C11", "C12", "C13")
SELF_CONSISTENCY_CLAIMS = ("C7", "C8")
#: Models of the gap figure: (name, title).
GAP_PANELS = (("triangular", "non-IMA: triangular f, logistic prior"), ("ima", "IMA class: O·h(z), Gaussian prior"))
#: Models of the self-consistency figure (the C7/C8 quick-mode models and an IMA-class one).
SC_MODELS = ("triangular", "embedding", "ima")


class Progress:
    """Progress of the figure phase: ``start(what)`` names the work now running (tqdm
    postfix), ``done()`` counts one finished step.  A disabled bar prints nothing."""

    def __init__(self, bar: Any = None) -> None:
        self.bar = bar

    def start(self, what: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(what, refresh=True)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
                         "legend.fontsize": 7, "legend.framealpha": 0.9})
    return plt


def _save(fig, out: Path, stem: str) -> list[str]:
    """PNG and SVG, each written under a temporary name and renamed.  Figures with a layout
    engine (orders) are cropped to their content; the fixed-grid ones are saved as laid out."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    tight = fig.get_layout_engine() is not None
    for ext in ("png", "svg"):
        p = out / f"{stem}.{ext}"
        tmp = out / f".{stem}.tmp.{ext}"
        fig.savefig(tmp, bbox_inches="tight" if tight else None)
        tmp.replace(p)
        paths.append(str(p))
    return paths


#: Fixed layout of the panel figures, in inches (a computed layout engine costs several
#: seconds per figure here; these sizes fit the labels used, checked on the rendered PNGs).
SUPTITLE_IN, TITLE_IN, XLABEL_IN, LEGEND_LINE_IN, LEFT_IN, RIGHT_IN, WSPACE_IN = 0.45, 0.55, 0.55, 0.17, 0.85, 0.25, 1.0


def _panel_grid(plt, suptitle: str, ncols: int, axes_h: float, legend_lines: list[int], panel_w: float = 4.1,
                title_lines: int = 1):
    """A figure titled ``suptitle`` of ``len(legend_lines)`` rows × ``ncols`` panels; under
    each row of axes a row of blank axes of ``legend_lines[i]`` lines holds the legends, so
    no legend can cover data.  Returns (fig, axes, legend_axes), arrays of shape (rows, ncols)."""
    title_h = TITLE_IN + 0.16 * (title_lines - 1)
    heights: list[float] = [SUPTITLE_IN]
    for lines in legend_lines:
        heights += [title_h, axes_h, XLABEL_IN, LEGEND_LINE_IN * lines + 0.15]
    width = LEFT_IN + RIGHT_IN + ncols * panel_w + (ncols - 1) * WSPACE_IN
    fig = plt.figure(figsize=(width, sum(heights)))
    gs = fig.add_gridspec(len(heights), ncols, height_ratios=heights, hspace=0, left=LEFT_IN / width,
                          right=1 - RIGHT_IN / width, top=1, bottom=0, wspace=WSPACE_IN / panel_w)
    rows = len(legend_lines)
    axes = np.empty((rows, ncols), dtype=object)
    leg = np.empty((rows, ncols), dtype=object)
    for r in range(rows):
        for c in range(ncols):
            axes[r, c] = fig.add_subplot(gs[2 + 4 * r, c])
            leg[r, c] = fig.add_subplot(gs[4 + 4 * r, c])
            leg[r, c].axis("off")
    fig.suptitle(suptitle, y=1 - 0.5 * SUPTITLE_IN / sum(heights), va="center")
    return fig, axes, leg


def _legend_in(lax, ax) -> None:
    """The legend of ``ax``, drawn in the blank axes ``lax`` under it."""
    lax.legend(*ax.get_legend_handles_labels(), loc="upper center", ncol=1, frameon=False, borderaxespad=0)


def _num(v: Any) -> float:
    """A report number as float; the strings 'nan'/'inf' that report.json uses for
    non-finite values (and None) become nan."""
    if isinstance(v, bool) or v is None:
        return math.nan
    if isinstance(v, (int, float)):
        return float(v)
    return math.nan


def _positive(a: np.ndarray) -> np.ndarray:
    """Values for a log axis: non-positive entries masked (nan), not clamped to a fake value."""
    a = np.asarray(a, float)
    return np.where(a > 0, a, np.nan)


def _slope_guide(ax, g: np.ndarray, dev: np.ndarray, noise: np.ndarray | None, factor: float = 4.0) -> None:
    """A slope −1 line on log–log axes, ``factor`` above the data at an anchor in the
    asymptotic range (the middle point where the deviation is above 10× its noise), drawn
    last and on top so the data lines cannot hide it."""
    ok = np.isfinite(dev) & (dev > 0)
    if noise is not None:
        ok &= dev > 10 * np.asarray(noise, float)
    if not ok.any():
        return
    idx = np.flatnonzero(ok)
    i = idx[len(idx) // 2]
    ax.loglog(g, factor * dev[i] * g[i] / g, color="k", ls=(0, (6, 3)), lw=1.6, zorder=10,
              label=rf"slope $-1$ guide ($O(\gamma^{{-2}})$, drawn {factor:g}$\times$ above the data)")


# ----------------------------------------------------------------------------------------
# What the report contains
# ----------------------------------------------------------------------------------------

def claim_ids(report: dict[str, Any]) -> set[str]:
    return {str(e.get("id")) for e in report.get("claims", [])}


def planned_figures(report: dict[str, Any]) -> list[str]:
    """The figure stems drawn for this report: only those of the claims it contains."""
    ids = claim_ids(report)
    out = []
    if ids & set(GAP_CLAIMS):
        out.append("gap")
    if ids & set(SELF_CONSISTENCY_CLAIMS):
        out.append("self_consistency")
    if order_rows(report):
        out.append("orders")
    if "C17" in ids:
        out.append("population")
    return out


def c13_prior_average(report: dict[str, Any]) -> dict[str, Any] | None:
    """C13's own Monte Carlo estimate, from the details of its check that holds
    ``per_gamma2``: rows {gamma2, mean_gap, mean_gap_se, C_IMA, C_IMA_se}, optionally
    mean_gap_minus_c_ima(_se) (the paired mean of gap − c_IMA) and a per-row num_samples;
    the check's ``num_samples`` otherwise.  Returns arrays sorted by γ² (missing entries nan)
    and ``n`` (sample count per row, None where unknown); None when C13 was not run or
    reports no such estimate."""
    for e in report.get("claims", []):
        if e.get("id") != "C13":
            continue
        for c in e.get("checks", []):
            d = c.get("details")
            if isinstance(d, dict) and isinstance(d.get("per_gamma2"), list) and d["per_gamma2"]:
                rows = sorted((r for r in d["per_gamma2"] if isinstance(r, dict)), key=lambda r: _num(r.get("gamma2")))
                keys = ("gamma2", "mean_gap", "mean_gap_se", "C_IMA", "C_IMA_se", "mean_gap_minus_c_ima", "mean_gap_minus_c_ima_se")
                arr: dict[str, Any] = {k: np.array([_num(r.get(k)) for r in rows]) for k in keys}
                arr["n"] = [_count(r.get("num_samples", d.get("num_samples"))) for r in rows]
                return arr
    return None


def _count(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _samples_text(ns: list[int | None]) -> str:
    """'over 256 prior points', or the range when the rows used different counts."""
    known = sorted({n for n in ns if n is not None})
    if not known:
        return "over prior points (count not reported)"
    if len(known) == 1 and None not in ns:
        return f"over {known[0]} prior points"
    return f"over {known[0]}–{known[-1]} prior points (count beside each point)"


@dataclass
class OrderRow:
    """One fitted-order check of the report: observed order ± s.e. and its pass band."""

    label: str
    order: float
    stderr: float
    theory: float
    tolerance: float
    passed: bool


_ORDER_SUFFIX = re.compile(r"[,:]?\s*observed order.*$")


def order_rows(report: dict[str, Any]) -> list[OrderRow]:
    """Every check of the report that carries a fitted order (details.fit.order), in report order."""
    rows = []
    for e in report.get("claims", []):
        for c in e.get("checks", []):
            d = c.get("details")
            fit = d.get("fit") if isinstance(d, dict) else None
            if not (isinstance(fit, dict) and "order" in fit and "theory_order" in d):
                continue
            name = _ORDER_SUFFIX.sub("", str(c.get("name", ""))).rstrip(" ,:")
            rows.append(OrderRow(f"{e.get('id')} {name}"[:80], _num(fit.get("order")), _num(fit.get("stderr")),
                                 _num(d.get("theory_order")), _num(c.get("tolerance")), bool(c.get("passed"))))
    if not any(math.isfinite(r.order) for r in rows):
        return []
    return rows


# ----------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------

def gap_figure(report: dict[str, Any], ctx: Context, progress: Progress | None = None):
    """The gap theorem (C11–C13): see the module docstring.  C13's C_IMA(f, p0) does not
    depend on γ²; its band is the estimate reported with the largest γ².  One ``progress``
    step per model."""
    progress = progress or Progress()
    plt = _mpl()
    avg = c13_prior_average(report)
    which = ", ".join(c for c in GAP_CLAIMS if c in claim_ids(report))
    paired = avg is not None and bool(np.isfinite(avg["mean_gap_minus_c_ima"]).any())
    fig, axes, legs = _panel_grid(plt, f"The gap theorem ({which}): log p − ELBO* → c_IMA, and L_IMA − ELBO* → 0 at rate γ⁻²",
                                  2, 3.4, [5 if avg is not None else 3, 4 if paired else 3], panel_w=4.9, title_lines=2)
    for col, (name, title) in enumerate(GAP_PANELS):
        progress.start(f"gap: {name}")
        res = ctx.sweep(name)
        g = np.array([r.gamma2 for r in res])
        lg = np.log10(g)
        gap = np.array([r.gap.value for r in res])
        err = np.array([r.gap.error for r in res])
        c = res[0].c_ima
        dev = gap - c  # L_IMA − ELBO* = log p − c_IMA − ELBO*
        z0 = ", ".join(f"{v:.3g}" for v in res[0].latent)

        ax = axes[0, col]
        ax.axhline(c, color="k", ls="--", lw=1, zorder=1, label=rf"$c_{{\mathrm{{IMA}}}}(f, z_0) = {c + 0.0:.4f}$")
        ax.axhline(0, color="0.6", lw=0.8, zorder=1)
        ax.errorbar(lg, gap, yerr=err, fmt="o-", ms=4, color="tab:blue", zorder=3,
                    label=r"$\log p_\gamma(x) - \mathrm{ELBO}^*(x)$ at $z_0$")
        ax.errorbar(lg, dev, yerr=err, fmt="s--", ms=7, mfc="none", color="tab:orange", zorder=4,
                    label=r"$L_{\mathrm{IMA}}(x) - \mathrm{ELBO}^*(x)$ at $z_0$")
        if name == "triangular" and avg is not None:
            C, Cse = float(avg["C_IMA"][-1]), float(avg["C_IMA_se"][-1])
            ax.axhspan(C - Cse, C + Cse, color="tab:green", alpha=0.35, lw=0, zorder=0)
            ax.axhline(C, color="tab:green", ls=":", lw=1.2, zorder=1,
                       label=rf"C13: $C_{{\mathrm{{IMA}}}}(f, p_0) = {C:.3f} \pm {Cse:.3f}$ (band: $\pm$ s.e.)")
            lga = np.log10(avg["gamma2"])
            ax.errorbar(lga, avg["mean_gap"], yerr=avg["mean_gap_se"], fmt="D", ms=4, capsize=3, color="tab:green", zorder=5,
                        label=rf"C13: prior average of log p $-$ ELBO* {_samples_text(avg['n'])} ($\pm$ s.e.)")
            if len(set(avg["n"])) > 1:
                for xi, yi, ni in zip(lga, avg["mean_gap"], avg["n"]):
                    ax.annotate(f"n={ni if ni is not None else '?'}", (xi, yi), xytext=(5, 0), textcoords="offset points",
                                fontsize=6, color="tab:green", va="center")
        note = ";  c_IMA = 0: the two curves coincide" if c == 0.0 else ""
        ax.set_title(f"{title}\nz0 = ({z0}){note}")
        ax.set_xlabel(r"$\log_{10}\gamma^2$")
        ax.set_ylabel("nats")
        _legend_in(legs[0, col], ax)

        ax2 = axes[1, col]
        ad = _positive(np.abs(dev))
        ax2.loglog(g, ad, "o-", ms=4, color="tab:orange", zorder=3, label=r"$|L_{\mathrm{IMA}} - \mathrm{ELBO}^*|$ at $z_0$")
        ax2.loglog(g, _positive(err), ":", color="0.35", lw=1.2, zorder=2, label="numerical error estimate of the gap")
        if name == "triangular" and avg is not None and np.isfinite(avg["mean_gap_minus_c_ima"]).any():
            pd, pse = np.abs(avg["mean_gap_minus_c_ima"]), avg["mean_gap_minus_c_ima_se"]
            ax2.errorbar(avg["gamma2"], _positive(pd), yerr=np.where(np.isfinite(pse), pse, 0.0), fmt="D", ms=4, capsize=3,
                         color="tab:green", zorder=5,
                         label=rf"C13: prior average of $|$gap $-$ $c_{{\mathrm{{IMA}}}}|$ (paired) {_samples_text(avg['n'])} ($\pm$ s.e.)")
        _slope_guide(ax2, g, ad, err)
        ax2.set_title(r"rate: $|L_{\mathrm{IMA}} - \mathrm{ELBO}^*| = O(\gamma^{-2})$" + f" ({name})")
        ax2.set_xlabel(r"$\gamma^2$ (decoder precision)")
        ax2.set_ylabel("nats")
        _legend_in(legs[1, col], ax2)
        progress.done()
    return fig


def self_consistency_figure(report: dict[str, Any], ctx: Context, progress: Progress | None = None):
    """C7 (row ‖μ* − z0‖, ‖f(μ*) − x‖ vs γ², slope −1 guide) and C8 (row γ² s_k*‖J_k(z0)‖²
    vs log10 γ², line at 1), each row only when its claim is in the report; one column per
    model.  One ``progress`` step per model."""
    import torch

    progress = progress or Progress()
    plt = _mpl()
    ids = claim_ids(report)
    rows = [c for c in SELF_CONSISTENCY_CLAIMS if c in ids]
    title = {("C7", "C8"): "Self-consistency (C7) and optimal encoder variances (C8)",
             ("C7",): "Self-consistency (C7): the encoder inverts the decoder",
             ("C8",): r"Optimal encoder variances (C8): $s^*_k \approx \gamma^{-2}/\|J_k(z_0)\|^2$"}[tuple(rows)]
    fig, axes, legs = _panel_grid(plt, title, len(SC_MODELS), 3.2, [3] * len(rows))
    for col, name in enumerate(SC_MODELS):
        progress.start(f"self-consistency: {name}")
        res = ctx.sweep(name)
        m = ctx.num(name)
        g = np.array([r.gamma2 for r in res])
        z0 = np.array(res[0].latent)
        for row, cid in enumerate(rows):
            ax = axes[row, col]
            if cid == "C7":
                mu = np.array([r.mu_star for r in res])
                fx = m.decoder(torch.tensor(mu, dtype=torch.float64, device=ctx.torch_device)).cpu().numpy()
                x = np.array(res[0].x)
                dmu = _positive(np.linalg.norm(mu - z0, axis=1))
                dfx = _positive(np.linalg.norm(fx - x, axis=1))
                ax.loglog(g, dmu, "o-", ms=4, color="tab:blue", label=r"$\|\mu^* - z_0\|$")
                ax.loglog(g, dfx, "s--", ms=4, color="tab:red", label=r"$\|f(\mu^*) - x\|$")
                _slope_guide(ax, g, np.fmax(dmu, dfx), None)
                ax.set_xlabel(r"$\gamma^2$")
                ax.set_ylabel("distance")
                ax.set_title(f"C7 self-consistency: {name}")
            else:
                J = jacobian(m.decoder, point_tensor(ctx.point(name), ctx.torch_device)).cpu().numpy()
                nrm2 = (J * J).sum(0)
                s = np.array([r.s_star for r in res])
                lg = np.log10(g)
                for k in range(s.shape[1]):
                    ax.plot(lg, g * s[:, k] * nrm2[k], "os^v"[k % 4] + "-", ms=4,
                            label=rf"$\gamma^2 s^*_{{{k + 1}}}\,\|J_{{{k + 1}}}(z_0)\|^2$")
                ax.axhline(1.0, color="k", ls=(0, (6, 3)), lw=1.6, zorder=10, label="limit 1")
                ax.set_xlabel(r"$\log_{10}\gamma^2$")
                ax.set_ylabel(r"$\gamma^2 s^*_k \|J_k(z_0)\|^2$")
                ax.set_title(f"C8 optimal variances: {name}")
            _legend_in(legs[row, col], ax)
        progress.done()
    return fig


def orders_figure(report: dict[str, Any]):
    """Observed order ± 3 s.e. of every fitted check against its pass band theory ± tolerance;
    None when no check has a fitted order.  The bands are the Rectangle patches of the
    BarContainer labelled "pass band ..." (one per row)."""
    rows = order_rows(report)
    if not rows:
        return None
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(rows) + 1.8), layout="constrained")
    y = np.arange(len(rows))
    theory = np.array([r.theory for r in rows])
    tol = np.array([r.tolerance for r in rows])
    order = np.array([r.order for r in rows])
    se3 = 3 * np.array([r.stderr for r in rows])
    ok = np.array([r.passed for r in rows])
    band_tol = np.where(np.isfinite(tol), tol, 0.0)
    ax.barh(y, 2 * band_tol, left=theory - band_tol, height=0.7, color="tab:green", alpha=0.25, lw=0,
            label="pass band: theory order ± the check's tolerance")
    ax.scatter(theory, y, marker="|", s=160, color="k", zorder=3, label="theoretical order")
    fin = np.isfinite(order)
    for mask, color, lab in ((ok & fin, "tab:blue", "observed order ± 3 s.e. (passed)"),
                             (~ok & fin, "tab:red", "observed order ± 3 s.e. (FAILED)")):
        if mask.any():
            ax.errorbar(order[mask], y[mask], xerr=np.where(np.isfinite(se3[mask]), se3[mask], 0.0), fmt="o", ms=4,
                        color=color, capsize=2, zorder=4, label=lab)
    vals = np.concatenate([theory - band_tol, theory + band_tol, order[fin] - np.nan_to_num(se3[fin]),
                           order[fin] + np.nan_to_num(se3[fin])])
    vals = vals[np.isfinite(vals)]
    lo, hi = max(vals.min(), -2.0), min(vals.max(), 4.0)
    pad = 0.05 * (hi - lo)
    ax.set_xlim(lo - pad, hi + pad)
    for yi, r in zip(y, rows):
        if not math.isfinite(r.order):
            ax.text(r.theory, yi, "  no fit (< 3 usable points)", color="tab:red", va="center", fontsize=7)
        elif not lo - pad <= r.order <= hi + pad:
            ax.annotate(f"{r.order:.2f} →" if r.order > hi else f"← {r.order:.2f}", (hi if r.order > hi else lo, yi),
                        color="tab:red" if not r.passed else "tab:blue", va="center", fontsize=7,
                        ha="right" if r.order > hi else "left")
    ax.set_yticks(y)
    ax.set_yticklabels([("FAIL  " if not r.passed else "") + r.label for r in rows], fontsize=6)
    for lab, r in zip(ax.get_yticklabels(), rows):
        if not r.passed:
            lab.set_color("tab:red")
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel(r"order $p$ in error $\approx C\,\varepsilon^p$, $\varepsilon = \gamma^{-2}$")
    nfail = int((~ok).sum())
    ax.set_title(f"Observed vs predicted convergence order of every fitted check "
                 f"({len(rows) - nfail} inside the pass band, {nfail} failed)")
    fig.legend(loc="outside lower center", ncol=2, frameon=False)
    return fig


def make_figures(report: dict[str, Any], ctx: Context, out: Path, progress: bool = False) -> list[str]:
    """Draw the figures of the claims in ``report`` into ``out`` (PNG and SVG); returns the
    PNG paths.  With ``progress`` a tqdm bar on stderr steps through the figure phase: one
    step per model of the gap and self-consistency figures, one per saved figure."""
    from tqdm import tqdm

    plt = _mpl()
    out = Path(out)
    plan = planned_figures(report)
    steps = {"gap": len(GAP_PANELS) + 1, "self_consistency": len(SC_MODELS) + 1, "orders": 1, "population": 1}
    paths: list[str] = []
    with tqdm(total=sum(steps[p] for p in plan), desc="gapcheck figures", unit="step", file=sys.stderr,
              disable=not progress, leave=True) as bar:
        prog = Progress(bar if progress else None)
        for stem in plan:
            if stem == "population":  # C17's figure (proofs_check.plots_population) saves itself
                from .plots_population import fig_population

                prog.start("population (C17)")
                paths += fig_population(ctx, out)
                prog.done()
                continue
            if stem == "gap":
                fig = gap_figure(report, ctx, prog)
            elif stem == "self_consistency":
                fig = self_consistency_figure(report, ctx, prog)
            else:
                prog.start("orders")
                fig = orders_figure(report)
            prog.start(f"saving {stem}.png/.svg")
            try:
                paths += _save(fig, out, stem)
            finally:
                plt.close(fig)
            prog.done()
        prog.start(f"{len(plan)} figure(s) written")
    return [p for p in paths if p.endswith(".png")]
