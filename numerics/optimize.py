"""Batched, float64, second-order maximization of smooth objectives (autograd Hessians).

Used for the posterior mode (log p_γ) and for ELBO*(x) = sup_{μ,s} ELBO(x; μ, s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.func import grad, hessian, vmap

Tensor = torch.Tensor


class ConvergenceError(RuntimeError):
    """An optimizer did not converge; the message names the problem instance."""


@dataclass
class NewtonResult:
    x: Tensor  # (B, p) maximizers
    value: Tensor  # (B,)
    grad: Tensor  # (B, p)
    hess: Tensor  # (B, p, p)
    decrement: Tensor  # (B,) Newton decrement ½ gᵀ(−H)⁻¹g: the predicted remaining increase
    converged: Tensor  # (B,) bool
    iterations: int


def newton_maximize(
    fun: Callable[..., Tensor],
    x0: Tensor,
    args: tuple[Tensor, ...] = (),
    max_iter: int = 100,
    tol: float = 1e-20,
    step_tol: float = 1e-15,
    value_noise: Tensor | None = None,
) -> NewtonResult:
    """Maximize ``fun(x, *args)`` (x of shape (p,), args per item) for a batch of items.

    A saddle-free damped Newton method: the step solves |H| δ = g with the eigenvalues of
    −H replaced by their absolute values (floored at 1e-12·max), followed by a batched
    backtracking line search (Armijo).  An item is converged when its Newton decrement
    ½ gᵀ|H|⁻¹ g is below ``tol`` or its step is below ``step_tol``·(1 + |x|).
    Items that never converge are reported, not hidden (``converged`` is False).

    ``value_noise`` (per item, optional) is the floating-point noise of ``fun``'s value: a
    step whose predicted gain 2·decrement is below it is accepted without the line search
    (which cannot resolve it), and an item whose decrement is below 1e-3·value_noise is
    converged (the remaining gain is far below what the value can resolve).
    """
    vfun = vmap(fun)
    vgrad = vmap(grad(fun))
    vhess = vmap(hessian(fun))
    x = x0.clone()
    B, p = x.shape
    alphas = torch.tensor([0.5**k for k in range(30)], dtype=x.dtype, device=x.device)
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    noise = torch.zeros(B, dtype=x.dtype, device=x.device) if value_noise is None else value_noise.to(x)
    val = vfun(x, *args)
    it = 0
    for it in range(1, max_iter + 1):
        g = vgrad(x, *args)
        H = vhess(x, *args)
        lam, V = torch.linalg.eigh(-H)
        lam_abs = lam.abs()
        floor = (lam_abs.amax(-1, keepdim=True) * 1e-12).clamp_min(1e-300)
        lam_c = torch.maximum(lam_abs, floor)
        gV = (V.transpose(-1, -2) @ g.unsqueeze(-1)).squeeze(-1)
        step = (V @ (gV / lam_c).unsqueeze(-1)).squeeze(-1)
        dec = 0.5 * (gV * gV / lam_c).sum(-1)
        small_step = step.abs().amax(-1) <= step_tol * (1 + x.abs().amax(-1))
        newly_done = (dec <= tol) | small_step | (dec <= 1e-3 * noise)
        done = done | newly_done
        if bool(done.all()):
            break
        # batched backtracking line search on the items still running
        cand = x.unsqueeze(1) + alphas.view(1, -1, 1) * step.unsqueeze(1)  # (B, A, p)
        A = alphas.numel()
        rep_args = tuple(a.unsqueeze(1).expand(a.shape[0], A, *a.shape[1:]).reshape(B * A, *a.shape[1:]) for a in args)
        cvals = vfun(cand.reshape(B * A, p), *rep_args).reshape(B, A)
        cvals = torch.where(torch.isfinite(cvals), cvals, torch.full_like(cvals, -torch.inf))
        armijo = cvals >= val.unsqueeze(1) + 1e-4 * alphas.view(1, -1) * (2 * dec).unsqueeze(1)
        # when the predicted increase is below rounding, accept the full Newton step
        tiny = ((2 * dec) <= 1e-13 * (1 + val.abs())) | ((2 * dec) <= noise)
        armijo[:, 0] = armijo[:, 0] | (tiny & torch.isfinite(cvals[:, 0]))
        first = torch.where(armijo.any(1), armijo.float().argmax(1), cvals.argmax(1))
        new_x = cand[torch.arange(B), first]
        new_val = cvals[torch.arange(B), first]
        improve = (new_val >= val) | tiny
        upd = (~done) & improve & torch.isfinite(new_val)
        x = torch.where(upd.unsqueeze(-1), new_x, x)
        val = torch.where(upd, new_val, val)
    g = vgrad(x, *args)
    H = vhess(x, *args)
    lam, V = torch.linalg.eigh(-H)
    gV = (V.transpose(-1, -2) @ g.unsqueeze(-1)).squeeze(-1)
    lam_c = torch.maximum(lam.abs(), (lam.abs().amax(-1, keepdim=True) * 1e-12).clamp_min(1e-300))
    dec = 0.5 * (gV * gV / lam_c).sum(-1)
    converged = done | (dec <= tol) | (dec <= 1e-3 * noise)
    return NewtonResult(x, vfun(x, *args), g, H, dec, converged, it)
