"""Planted faults: named ingredients that replace one piece of a claim check by a wrong one.

Each claim record lists the faults its check must reject (``Claim.faults``); the check asks
for an ingredient by the fault's name (the expected order, the contrast, the optimum, ...),
and gets the correct one when no fault is planted.  :data:`FAULTS` documents every name.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from numerics.elbo import elbo_gh
from numerics.jacobian import c_ima_batch_mean_jacobian, c_ima_from_jacobian
from numerics.sweep import PointResult

from ..context import Context
from .evidence import jac_at

#: Every planted fault: what it replaces, and with what.
FAULTS: dict[str, str] = {
    "entropy_without_e": "ELBO entropy ½Σlog(2πs) instead of ½Σlog(2πe s) (C1)",
    "marginal_variances": "mean-field variances set to the marginal variances (Λ⁻¹)_kk instead of 1/Λ_kk (C2)",
    "missing_half": "log det(JᵀJ) without its ½ (C3, C9; N2's wrong contrast for n > d)",
    "no_logdet": "c_IMA without the log-det term (C4)",
    "wrong_first_order": "tr M instead of tr M⁻¹ in the linear-Gaussian first-order term (C5)",
    "wrong_constant": "the β-VAE constant without its β (C6)",
    "wrong_rate": "expected order ½ instead of 1 for every O(ε) statement (C7–C11)",
    "perturbed_optimum": "ELBO* optimizer returns μ* + 0.05·√ε (an SGD-sized error) (C7, C11)",
    "refined_formula_curved": "the paper's refined variance formula taken as exact for a curved decoder (C8)",
    "logdet_for_norms": "½ log det JᵀJ in place of Σ log‖J_k‖ in the ELBO limit (C10)",
    "batch_mean_contrast": "c_IMA of the batch-mean Jacobian (the paper code's contrast) (C11, C13)",
    "non_ima_decoder": "a non-IMA decoder under the IMA-class claim (C12)",
    "mean_field": "the mean-field ELBO* in place of the full-covariance one (C14)",
    "ml_cannot_tell": "predicting no ELBO* difference between f and f∘R (C15)",
    "linear_a1": "the linear-model a1 formula applied to a curved decoder (C16)",
    "fullcov_scoring": "candidates scored with the full-covariance ELBO* instead of the mean-field one (C17)",
    "unpaired": "fresh data samples for each candidate θ instead of the same ones (C17)",
    "relative_1e-10_elbo_star": "the fast ELBO* multiplied by 1 + 1e-10 inside the estimator (V1)",
    "relative_1e-10_log_px": "the fast log p multiplied by 1 + 1e-10 inside the estimator (V1)",
    "single_mode": "mode search off: the second posterior mode is missed (N1)",
    "wrong_is_right": "the wrong contrast taken as c_IMA (N2)",
}


def expected_order(fault: str | None) -> float:
    """The order of the O(ε) statements: 1, or ½ under the fault ``wrong_rate``."""
    return 0.5 if fault == "wrong_rate" else 1.0


def perturb_mu(mus: np.ndarray, eps: np.ndarray, fault: str | None) -> np.ndarray:
    """μ* as the optimizer returned it, or μ* + 0.05·√ε under ``perturbed_optimum``."""
    return mus + 0.05 * np.sqrt(eps)[:, None] if fault == "perturbed_optimum" else mus


def wrong_contrast(ctx: Context, name: str, kind: str) -> float:
    """Planted wrong contrasts (docs/theory.md N2): the paper code's batch-mean Jacobian contrast, or
    c_IMA with the ½ missing in front of log det(JᵀJ)."""
    m = ctx.num(name)
    if kind == "batch_mean_contrast":
        gen = torch.Generator().manual_seed(ctx.seed)
        z = m.prior.sample(256, gen, device=ctx.torch_device)
        return float(c_ima_batch_mean_jacobian(m.decoder, z))
    if kind == "missing_half":
        J = jac_at(ctx, name)
        R = torch.linalg.qr(J, mode="r").R
        return float(torch.log(torch.linalg.vector_norm(J, dim=0)).sum() - 2 * torch.log(torch.diagonal(R).abs()).sum())
    raise ValueError(kind)


def perturbed_gaps(ctx: Context, name: str, res: list[PointResult], rel: float = 0.05) -> np.ndarray:
    """Planted fault 'perturbed_optimum': the ELBO* optimizer returns μ* + rel·√ε·(1,…,1)
    (an error of the size an SGD-trained encoder makes); the gap is recomputed from it."""
    m = ctx.num(name)
    out = []
    for r in res:
        g2 = r.gamma2
        mu = torch.tensor(r.mu_star, dtype=torch.float64, device=ctx.torch_device) + rel / math.sqrt(g2)
        x = torch.tensor(r.x, dtype=torch.float64, device=ctx.torch_device)
        e = elbo_gh(m, x, g2, mu, torch.tensor(r.s_star, dtype=torch.float64, device=ctx.torch_device), reduced=True)
        out.append(r.reduced_log_px - e.value)
    return np.array(out)



def contrast_variant(J: np.ndarray, fault: str | None) -> float:
    """c_IMA of a matrix, or a planted wrong contrast."""
    norms = np.log(np.linalg.norm(J, axis=0)).sum()
    half_logdet = 0.5 * np.linalg.slogdet(J.T @ J)[1]
    if fault == "missing_half":
        return float(norms - 2 * half_logdet)
    if fault == "no_logdet":
        return float(norms)
    return float(c_ima_from_jacobian(torch.as_tensor(J)))

