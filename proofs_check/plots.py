"""Figures of `gapcheck verify` (PNG and SVG), in the spirit of the paper's figures but with
exact values and error bars:

- ``gap``: log p − ELBO* (→ c_IMA) and L_IMA − ELBO* (→ 0) against log10 γ², for a non-IMA
  and an IMA-class decoder, at one point and averaged over prior samples;
- ``self_consistency``: log10 s_k* against log10 γ² (slope −1), ‖f(μ*) − x‖ and ‖μ* − z0‖;
- ``orders``: observed against predicted convergence order for every fitted check.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from numerics.sweep import evaluate_points

from .context import Context


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _save(fig, out: Path, stem: str) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        p = out / f"{stem}.{ext}"
        tmp = out / f".{stem}.tmp.{ext}"
        fig.savefig(tmp, bbox_inches="tight")
        tmp.replace(p)
        paths.append(str(p))
    return paths


def _averaged(ctx: Context, name: str, num: int) -> dict[str, np.ndarray]:
    """Prior-averaged gap and L_IMA − ELBO* over ``num`` prior samples (mean ± standard error)."""
    m = ctx.num(name)
    gen = torch.Generator().manual_seed(ctx.seed + 7)
    zs = m.prior.sample(num, gen, device=ctx.torch_device)
    g2s = ctx.sweep_gamma2
    res = evaluate_points(m, list(zs), g2s, search_modes=False)
    gap = np.array([r.gap.value for r in res]).reshape(num, len(g2s))
    dev = np.array([r.gap.value - r.c_ima for r in res]).reshape(num, len(g2s))
    cima = np.array([r.c_ima for r in res]).reshape(num, len(g2s))[:, 0]
    se = lambda a: a.std(0, ddof=1) / math.sqrt(num)  # noqa: E731
    return {"g2": np.array(g2s), "gap": gap.mean(0), "gap_se": se(gap), "dev": dev.mean(0), "dev_se": se(dev),
            "C": cima.mean(), "C_se": cima.std(ddof=1) / math.sqrt(num)}


def fig_gap(ctx: Context, out: Path) -> list[str]:
    plt = _mpl()
    num = ctx.n_samples(6, 16, 64)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for col, (name, label) in enumerate((("triangular", "non-IMA: triangular f, logistic prior"), ("ima", "IMA class: O·h(z), Gaussian prior"))):
        res = ctx.sweep(name)
        lg = np.log10([r.gamma2 for r in res])
        gap = np.array([r.gap.value for r in res])
        err = np.array([r.gap.error for r in res])
        c = res[0].c_ima
        av = _averaged(ctx, name, num)
        ax = axes[0, col]
        ax.errorbar(lg, gap, yerr=err, fmt="o-", ms=4, label=r"$\log p_\gamma(x) - \mathrm{ELBO}^*(x)$ at $z_0$")
        ax.errorbar(lg, lg * 0 + gap - c, yerr=err, fmt="s-", ms=3, label=r"$L_{\mathrm{IMA}}(x) - \mathrm{ELBO}^*(x)$ at $z_0$")
        ax.axhline(c, color="k", ls="--", lw=1, label=rf"$c_{{\mathrm{{IMA}}}}(f, z_0) = {c:.4f}$".replace("-0.0000", "0.0000"))
        lga = np.log10(av["g2"])
        ax.plot(lga, av["gap"], "^-", ms=3, color="tab:green", label=rf"prior average over {num} points (band: $\pm$ s.e.)")
        ax.fill_between(lga, av["gap"] - av["gap_se"], av["gap"] + av["gap_se"], color="tab:green", alpha=0.15)
        ax.axhline(av["C"], color="gray", ls=":", lw=1, label=rf"mean $c_{{\mathrm{{IMA}}}}$ of those points = {av['C'] + 0.0:.4f}".replace("-0.0000", "0.0000"))
        ax.set_title(label)
        ax.set_ylabel("nats")
        ax.legend(fontsize=7)
        ax2 = axes[1, col]
        dev = np.abs(gap - c)
        ax2.loglog([r.gamma2 for r in res], np.maximum(dev, 1e-300), "o-", ms=4, label=r"$|L_{\mathrm{IMA}} - \mathrm{ELBO}^*|$ at $z_0$")
        ax2.loglog(av["g2"], np.maximum(np.abs(av["dev"]), 1e-300), "^-", ms=3, label="prior average")
        ax2.loglog([r.gamma2 for r in res], err, "k:", lw=1, label="numerical error estimate")
        g = np.array([r.gamma2 for r in res])
        ax2.loglog(g, dev[0] * g[0] / g, "k--", lw=0.8, label=r"slope $-1$ ($O(\gamma^{-2})$)")
        ax2.set_xlabel(r"$\gamma^2$ (decoder precision)")
        ax2.set_ylabel("nats")
        ax2.legend(fontsize=7)
    for ax in axes[0]:
        ax.set_xlabel(r"$\log_{10}\gamma^2$")
    fig.suptitle("The gap theorem (C11, C12, C13): log p − ELBO* → c_IMA, and L_IMA − ELBO* → 0 at rate γ⁻²")
    fig.tight_layout()
    paths = _save(fig, out, "gap")
    plt.close(fig)
    return paths


def fig_self_consistency(ctx: Context, out: Path) -> list[str]:
    plt = _mpl()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, mk in (("triangular", "o"), ("embedding", "s"), ("ima", "^")):
        res = ctx.sweep(name)
        g = np.array([r.gamma2 for r in res])
        s = np.array([r.s_star for r in res])
        for k in range(s.shape[1]):
            axes[0].plot(np.log10(g), np.log10(s[:, k]), mk + "-", ms=3, label=f"{name}: $s^*_{k + 1}$")
        z0 = np.array(res[0].latent)
        mu = np.array([r.mu_star for r in res])
        m = ctx.num(name)
        fx = m.decoder(torch.tensor(mu, dtype=torch.float64, device=ctx.torch_device)).cpu().numpy()
        x = np.array(res[0].x)
        axes[1].loglog(g, np.linalg.norm(fx - x, axis=1), mk + "-", ms=3, label=rf"{name}: $\|f(\mu^*) - x\|$")
        axes[1].loglog(g, np.linalg.norm(mu - z0, axis=1), mk + "--", ms=3, label=rf"{name}: $\|\mu^* - z_0\|$")
    g = np.array(ctx.sweep_gamma2)
    axes[0].plot(np.log10(g), -np.log10(g), "k:", lw=1, label="slope −1")
    axes[0].set_xlabel(r"$\log_{10}\gamma^2$")
    axes[0].set_ylabel(r"$\log_{10} s^*_k$ (optimal encoder variance)")
    axes[0].set_title("C8: optimal variances, $s^*_k \\approx \\gamma^{-2}/\\|J_k\\|^2$")
    axes[0].legend(fontsize=7)
    axes[1].loglog(g, 1 / g, "k:", lw=1, label=r"$\gamma^{-2}$")
    axes[1].set_xlabel(r"$\gamma^2$")
    axes[1].set_ylabel("distance")
    axes[1].set_title("C7: self-consistency, the encoder inverts the decoder")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    paths = _save(fig, out, "self_consistency")
    plt.close(fig)
    return paths


def fig_orders(report: dict[str, Any], out: Path) -> list[str]:
    plt = _mpl()
    rows = []
    for e in report["claims"]:
        for c in e["checks"]:
            d = c.get("details") or {}
            fit = d.get("fit") if isinstance(d, dict) else None
            if isinstance(fit, dict) and isinstance(fit.get("order"), float):
                theory = d.get("theory_order", 1.0)
                label = c["name"].split(": observed order")[0].split(" observed order")[0].split(", observed order")[0].rstrip(",")
                rows.append((f"{e['id']} {label}"[:70], fit["order"], fit["stderr"], theory, c["passed"]))
    if not rows:
        return []
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(rows) + 1.2))
    y = np.arange(len(rows))
    ax.errorbar([r[1] for r in rows], y, xerr=[3 * r[2] for r in rows], fmt="o", ms=4, label="observed order (± 3 s.e.)")
    ax.scatter([r[3] for r in rows], y, marker="|", s=200, color="k", label="theoretical order")
    ax.set_yticks(y)
    ax.set_yticklabels([r[0] for r in rows], fontsize=6)
    ax.set_xlabel(r"order $p$ in error $\approx C\,\varepsilon^p$, $\varepsilon = \gamma^{-2}$")
    ax.set_xlim(0, 2)
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    ax.set_title("Observed vs predicted convergence order of every asymptotic check")
    fig.tight_layout()
    paths = _save(fig, out, "orders")
    plt.close(fig)
    return paths


def make_figures(report: dict[str, Any], ctx: Context, out: Path, progress: bool = False) -> list[str]:
    """All figures; returns the PNG paths (SVGs are written beside them)."""
    paths = fig_gap(ctx, out) + fig_self_consistency(ctx, out) + fig_orders(report, out)
    return [p for p in paths if p.endswith(".png")]
