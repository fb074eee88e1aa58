"""Figures of `gapcheck experiment` (PNG and SVG, matplotlib Agg), drawn from results.json
content only (nothing is re-estimated here):

- ``e1_gap``: the paper's gap figure: log p − ELBO and L_IMA − ELBO against log10 γ², the
  trained encoders (mean over held-out on-manifold points, one marker per seed, error bar =
  standard error over seeds) with the exact curves (ELBO*) overlaid, one column per mixing.
- ``e2_self_consistency``: mean log s_k vs log10 γ² (trained per seed, exact s*), with a
  slope −1 guide; ‖f(μ(x)) − x‖² and ‖μ(x) − g(x)‖² vs γ² (trained and exact optimum).
- ``e3_mcc``: MCC (Pearson) vs log10 γ² per mixing, and the learned decoders' C_IMA (± MC
  standard error) next to the true mixing's.
- ``e4_mcc_vs_cima``: MCC vs C_IMA of the Möbius ∘ shear mixing.
- ``e5_rotations``: ELBO*(f∘R_θ) − ELBO*(f) and log p(f∘R_θ) − log p(f) vs θ.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .plots import _mpl, _save


def _exp(res: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((e for e in res["experiments"] if e["name"] == name), None)


def fig_e1(e: dict[str, Any]):
    plt = _mpl()
    mixes = list(e["curves"])
    fig, axes = plt.subplots(2, len(mixes), figsize=(4.2 * len(mixes), 6.0), squeeze=False)
    for c, mix in enumerate(mixes):
        cur = e["curves"][mix]
        lg = np.log10(cur["gamma2"])
        rows = [r for r in e["rows"] if r["mixing"] == mix and r["x_kind"] == "manifold"]
        seeds = sorted({r["seed"] for r in rows})
        for a, (key, exact, title) in enumerate((("log_px_minus_elbo_trained", cur["exact_gap"], "log p − ELBO"),
                                                 ("l_ima_minus_elbo_trained", cur["exact_lima_minus_elbo"], "L_IMA − ELBO"))):
            ax = axes[a, c]
            for sd in seeds:
                ys = [next(r for r in rows if r["seed"] == sd and r["gamma2"] == g)[key]["value"] for g in cur["gamma2"]]
                ax.plot(lg, ys, "o", ms=3, alpha=0.5, color="tab:blue", label="trained encoder (per seed)" if sd == seeds[0] else None)
            mean = [np.mean([r[key]["value"] for r in rows if r["gamma2"] == g]) for g in cur["gamma2"]]
            ax.plot(lg, mean, "-", color="tab:blue", label="trained, mean over seeds")
            ax.plot(lg, exact, "s-", color="black", ms=4, label="exact optimum ELBO*")
            if a == 0:
                ax.axhline(cur["c_ima_mean"], color="tab:red", ls="--", lw=1, label="mean c_IMA(f, z0)")
            else:
                ax.axhline(0, color="tab:red", ls="--", lw=1)
            ax.set_yscale("symlog", linthresh=0.1)
            ax.set_title(f"{mix}: {title}")
            ax.set_xlabel("log10 γ²")
            ax.legend()
    fig.tight_layout()
    return fig


def fig_e2(e: dict[str, Any]):
    plt = _mpl()
    mixes = sorted({r["mixing"] for r in e["rows"]})
    fig, axes = plt.subplots(len(mixes), 3, figsize=(12, 3.4 * len(mixes)), squeeze=False)
    for i, mix in enumerate(mixes):
        rows = [r for r in e["rows"] if r["mixing"] == mix]
        g = sorted({r["gamma2"] for r in rows})
        lg = np.log10(g)
        seeds = sorted({r["seed"] for r in rows})
        d = len(rows[0]["log_s"])
        ax = axes[i, 0]
        for k in range(d):
            for sd in seeds:
                ys = [next(r for r in rows if r["seed"] == sd and r["gamma2"] == gg)["log_s"][k]["value"] / math.log(10) for gg in g]
                ax.plot(lg, ys, "o-", ms=3, alpha=0.5, color=f"C{k}", label=f"trained log10 s_{k + 1}" if sd == seeds[0] else None)
            ys = [next(r for r in rows if r["gamma2"] == gg)["log_s_star"][k] / math.log(10) for gg in g]
            ax.plot(lg, ys, "k--", lw=1, label="exact s*" if k == 0 else None)
        ax.set_xlabel("log10 γ²")
        ax.set_ylabel("mean log10 s_k")
        ax.set_title(f"{mix}: encoder variances (slope −1 expected)")
        ax.legend()
        for j, (key, kstar, lab) in enumerate((("fit_sq", "fit_sq_star", "‖f(μ(x)) − x‖²"), ("mu_minus_g_sq", "mu_star_minus_g_sq", "‖μ(x) − g(x)‖²"))):
            ax = axes[i, j + 1]
            for sd in seeds:
                ys = [next(r for r in rows if r["seed"] == sd and r["gamma2"] == gg)[key]["value"] for gg in g]
                ax.loglog(g, ys, "o-", ms=3, alpha=0.6, color="tab:blue", label="trained (per seed)" if sd == seeds[0] else None)
            ys = [next(r for r in rows if r["gamma2"] == gg)[kstar] for gg in g]
            ax.loglog(g, ys, "s-", color="black", ms=4, label="exact optimum (μ*)")
            ax.set_xlabel("γ²")
            ax.set_title(f"{mix}: mean {lab}")
            ax.legend()
    fig.tight_layout()
    return fig


def fig_e3(e: dict[str, Any]):
    plt = _mpl()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, mix in enumerate(sorted({r["mixing"] for r in e["rows"]})):
        rows = [r for r in e["rows"] if r["mixing"] == mix]
        g = sorted({r["gamma2"] for r in rows})
        for r in rows:
            axes[0].plot(math.log10(r["gamma2"]), r["mcc"]["value"], "o", ms=3, alpha=0.5, color=f"C{i}")
        s = [x for x in e["summary"] if x["mixing"] == mix]
        axes[0].errorbar(np.log10(g), [x["mcc_mean"] for x in s], yerr=[x["mcc_se"] or 0 for x in s], color=f"C{i}", capsize=3,
                         label=f"{mix} (C_IMA true {s[0]['c_ima_true']:.3f})")
        cl = [x["c_ima_learned_mean"] for x in s]
        axes[1].errorbar(np.log10(g), [np.nan if v is None else v for v in cl], yerr=[x["c_ima_learned_se"] or 0 for x in s],
                         color=f"C{i}", capsize=3, label=f"{mix}: learned")
        axes[1].axhline(s[0]["c_ima_true"], color=f"C{i}", ls="--", lw=1, label=f"{mix}: true mixing")
    axes[0].set_xlabel("log10 γ²")
    axes[0].set_ylabel("MCC (Pearson, encoder means)")
    axes[0].legend()
    axes[1].set_xlabel("log10 γ²")
    axes[1].set_ylabel("global C_IMA (MC ± SE)")
    axes[1].legend()
    fig.tight_layout()
    return fig


def fig_e4(e: dict[str, Any]):
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    x = [r["c_ima_true"]["value"] for r in e["rows"]]
    y = [r["mcc"]["value"] for r in e["rows"]]
    ax.plot(x, y, "o", alpha=0.5, label="runs")
    s = e["summary"]
    ax.errorbar([v["c_ima_true"] for v in s], [v["mcc_mean"] for v in s], yerr=[v["mcc_se"] or 0 for v in s], fmt="s-", color="black",
                capsize=3, label="mean ± SE over seeds")
    t = e["trend"]
    ax.set_title(f"slope {t['slope']:.3f} ± {t['slope_se']:.3f}")
    ax.set_xlabel("C_IMA of the mixing (Möbius ∘ shear)")
    ax.set_ylabel("MCC (Pearson)")
    ax.legend()
    fig.tight_layout()
    return fig


def fig_e5(e: dict[str, Any]):
    plt = _mpl()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, lab in enumerate(dict.fromkeys(r["decoder"] for r in e["rows"])):
        rows = [r for r in e["rows"] if r["decoder"] == lab]
        th = [r["theta"] for r in rows]
        axes[0].errorbar(th, [-r["elbo_star_drop"]["value"] for r in rows], yerr=[r["elbo_star_drop"]["error"] for r in rows], fmt="o-",
                         color="black" if lab == "truth" else f"C{i}", capsize=3, label=lab)
        c0 = rows[0]["c_ima"]["value"]
        axes[0].plot(th, [-(r["c_ima"]["value"] - c0) for r in rows], ":", color="black" if lab == "truth" else f"C{i}")
        axes[1].plot(th, [r["log_px_change"]["value"] for r in rows], "o-", color="black" if lab == "truth" else f"C{i}", label=lab)
    axes[0].set_xlabel("θ")
    axes[0].set_ylabel("ELBO*(f∘R_θ) − ELBO*(f)  (dotted: −ΔC_IMA)")
    axes[0].legend()
    axes[1].set_xlabel("θ")
    axes[1].set_ylabel("log p(f) − log p(f∘R_θ)")
    fig.tight_layout()
    return fig


FIGURES = {"E1": ("e1_gap", fig_e1), "E2": ("e2_self_consistency", fig_e2), "E3": ("e3_mcc", fig_e3),
           "E4": ("e4_mcc_vs_cima", fig_e4), "E5": ("e5_rotations", fig_e5)}


def make_figures(res: dict[str, Any], out: Path) -> list[str]:
    """Draw the figure of every experiment that ran; returns the written paths."""
    plt = _mpl()
    paths: list[str] = []
    for name, (stem, fn) in FIGURES.items():
        e = _exp(res, name)
        if e is None:
            continue
        fig = fn(e)
        paths += _save(fig, Path(out), stem)
        plt.close(fig)
    return paths
