"""The C17 figure (PNG and SVG): population objectives L(θ) and E(θ) of the rotated family
f∘R_θ against θ, for the three families of proofs_check.checks.population.

Top row: the absolute values L(θ), E(θ) (and E_full(θ) for the IMA family) at the largest γ²,
each with its ± 1 standard error band (Monte Carlo over x; the bands are wide because they
include the spread of log p_γ(x) over x).  Bottom row: the paired differences to the truth,
E(θ) − E(0) and L(θ) − L(0), for every γ² with ± 1 paired standard error bands, and the
predicted limit −(C_IMA(f∘R_θ) − C_IMA(f)) as a curve.  Everything is read from the claim's
cache when C17 ran in the same context, else computed (the same function, the same numbers).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from numerics.jacobian import c_ima_from_jacobian, jacobian
from numerics.population import group_mean, rotation_matrix

from .checks.population import FAMILIES, family_data, family_model, sizes
from .context import Context
from .plots import _mpl, _save

#: θ values of the predicted-margin curve
CURVE_POINTS = 33


def predicted_curve(ctx: Context, family: str, num: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """θ grid on [0, π/4] and C_IMA(f∘R_θ, p0) − C_IMA(f, p0) ± SE by Monte Carlo over ``num``
    prior draws z, using that the standard Gaussian prior is rotation invariant:
    C_IMA(f∘R_θ, p0) = E_z c_IMA(J_f(z) R_θ) (substitute z = R_θ u), so one Jacobian per draw
    serves every θ."""
    key = ("C17", "curve", family, num, ctx.seed)
    if key not in ctx.cache:
        m = family_model(ctx, family)
        gen = torch.Generator().manual_seed(7919 * ctx.seed + 1790)
        z = m.prior.sample(num, gen)
        J = jacobian(m.decoder, z)
        c0 = c_ima_from_jacobian(J).numpy()
        th = np.linspace(0.0, math.pi / 4, CURVE_POINTS)
        val, se = [], []
        ones = np.arange(num)
        for t in th:
            R = torch.as_tensor(rotation_matrix(m.d, float(t)), dtype=torch.float64)
            g = group_mean(c_ima_from_jacobian(J @ R).numpy() - c0, ones)
            val.append(g.value)
            se.append(g.se)
        ctx.cache[key] = (th, np.array(val), np.array(se))
    return ctx.cache[key]


def fig_population(ctx: Context, out: Path) -> list[str]:
    """Draw the C17 figure into ``out`` (population.png, population.svg); returns both paths."""
    plt = _mpl()
    fams = list(FAMILIES)
    n_g2 = len(sizes(ctx).gamma2s)
    # constrained layout keeps the legends (below each axes, off the data) inside the figure
    fig, axes = plt.subplots(2, len(fams), figsize=(4.6 * len(fams), 7.4 + 0.16 * n_g2), layout="constrained")
    num_curve = max(4096, sizes(ctx).contrast_samples // 4)
    cmap = plt.get_cmap("viridis")
    for col, fam in enumerate(fams):
        fd = family_data(ctx, fam)
        th = np.array(fd.thetas)
        g2s = sorted(fd.gamma2s)
        gmax = g2s[-1]
        po = fd.objectives[gmax]
        ax = axes[0, col]
        for key, label, color in (("E_full", r"$E_{\mathrm{full}}(\theta)$ (full-covariance $q$)", "tab:gray"),
                                  ("E", r"$E(\theta)=\mathbb{E}_x\mathrm{ELBO}^*(x;f_\theta)$", "tab:blue"),
                                  ("L", r"$L(\theta)=\mathbb{E}_x\log p_\gamma(x;f_\theta)$", "k")):
            vals = [getattr(c, key) for c in po.candidates]
            if any(v is None for v in vals):
                continue
            v = np.array([g.value for g in vals])
            s = np.array([g.se for g in vals])
            ax.plot(th, v, "o-" if key != "E_full" else "^--", ms=3, lw=1.5 if key != "E_full" else 2.5, color=color, label=label)
            ax.fill_between(th, v - s, v + s, color=color, alpha=0.12)
        ax.set_title(f"{FAMILIES[fam][1]}\n(γ² = {gmax:g}, {po.candidates[0].L.num_groups} antithetic groups)", fontsize=8)
        ax.set_xlabel(r"$\theta$ (rotation $f_\theta = f\circ R_\theta$)")
        ax.set_ylabel("nats per observation")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)
        ax2 = axes[1, col]
        ct, cv, cs = predicted_curve(ctx, fam, num_curve)
        ax2.plot(ct, -cv, "k--", lw=1.2, label=r"predicted limit $-(C_{\mathrm{IMA}}(f\circ R_\theta)-C_{\mathrm{IMA}}(f))$")
        ax2.fill_between(ct, -cv - cs, -cv + cs, color="k", alpha=0.1)
        for i, g2 in enumerate(g2s):
            p = fd.objectives[g2]
            dE = [p.diff("E", k) for k in range(len(th))]
            v = -np.array([d.value for d in dE])
            s = np.array([d.se for d in dE])
            color = cmap(0.15 + 0.7 * i / max(1, len(g2s) - 1))
            ax2.plot(th, v, "o-", ms=3, color=color, label=rf"$E(\theta)-E(0)$, $\gamma^2$ = {g2:.3g} ({dE[0].num_groups} groups)")
            ax2.fill_between(th, v - s, v + s, color=color, alpha=0.15)
        dL = np.array([-po.diff("L", k).value for k in range(len(th))])
        ax2.plot(th, dL, "s:", ms=3, color="tab:red", label=rf"$L(\theta)-L(0)$, $\gamma^2$ = {gmax:g}")
        if po.candidates[0].E_full is not None:
            dF = np.array([-po.diff("E_full", k).value for k in range(len(th))])
            ax2.plot(th, dF, "^:", ms=3, color="tab:gray", label=rf"$E_{{\mathrm{{full}}}}(\theta)-E_{{\mathrm{{full}}}}(0)$, $\gamma^2$ = {gmax:g}")
        ax2.axhline(0.0, color="k", lw=0.5)
        ax2.set_xlabel(r"$\theta$")
        ax2.set_ylabel("paired difference to the truth (nats)")
        ax2.set_title("differences to θ = 0 (band: ± 1 paired s.e.)", fontsize=8)
        ax2.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)
    fig.suptitle("C17: population objectives of the rotated decoders f∘R_θ (standard Gaussian prior, x ~ p_γ(x; f) with noise)", fontsize=10)
    paths = _save(fig, out, "population")
    plt.close(fig)
    return paths
