"""Negative controls N1, N2: the claims must fail where their assumptions fail."""

from __future__ import annotations

import sympy as sp
import torch

from numerics.jacobian import c_ima_batch_mean_jacobian, c_ima_from_jacobian, jacobian
from numerics.sweep import PointResult

from ..context import Context
from ..properties import run_property
from ..registry import CheckResult, claim
from .evidence import LOG2, Results, gap_eps, limit_checks, symbolic_equal
from .faults import wrong_contrast


@claim(
    id="N1", title="Non-injective decoder", kind="control",
    statement="f(z) = (z1², z2), symmetric prior, z0 = (1, 0.5): two equal posterior modes, so the gap → c_IMA + log 2, not c_IMA.",
    latex=r"f(z) = (z_1^2, z_2):\ \log p_\gamma(x) - \mathrm{ELBO}^*(x) \to c_{\mathrm{IMA}} + \log 2",
    paper="outside the theorems (injectivity assumption)",
    assumptions="violates injectivity",
    models=("noninjective",),
    faults=("single_mode",),
)
def check_n1(ctx: Context, fault: str | None) -> Results:
    res = ctx.sweep("noninjective", search_modes=(fault != "single_mode"))
    eps, gap, err = gap_eps(res)
    c = res[0].c_ima
    out = limit_checks("noninjective: gap → c_IMA + log 2", eps, gap, err, c + LOG2)
    modes = [r.n_modes for r in res if r.gamma2 >= 1e2]
    out.append(CheckResult("noninjective: the second posterior mode is detected and flagged (γ² ≥ 100)", "numerical",
                           all(k == 2 for k in modes) and all("multimodal" in r.flags for r in res if r.gamma2 >= 1e2),
                           None, None, "", {"n_modes": modes}, "holds"))
    out.extend(check_c11_like_rejects(ctx, "noninjective", res, c))
    sym = ctx.sym("noninjective")
    ell = sym.log_prior()
    J = sym.jacobian()
    val = lambda z: ell.subs(dict(zip(sym.latents, z))) - sp.log(abs((J.T * J).det().subs(dict(zip(sym.latents, z))))) / 2  # noqa: E731
    out.append(symbolic_equal("noninjective: both preimages (±1, 0.5) carry the same Laplace mass (so log 2)", val((1, sp.Rational(1, 2))), val((-1, sp.Rational(1, 2)))))
    return out


def check_c11_like_rejects(ctx: Context, name: str, res: list[PointResult], c: float) -> Results:
    """The C11 check (gap → c_IMA) must reject the non-injective decoder."""
    eps, gap, err = gap_eps(res)
    inner = limit_checks("inner", eps, gap, err, c)
    rejected = not all(r.passed for r in inner)
    return [CheckResult(f"{name}: the gap-theorem check (gap → c_IMA) rejects this decoder", "numerical", rejected, None, None, "", {}, "holds")]


@claim(
    id="N2", title="Wrong contrast", kind="control",
    statement="A contrast that is not c_IMA (c_IMA of the batch-mean Jacobian; a missing ½ for n > d) is rejected by the numerical checks.",
    latex=r"c_{\mathrm{IMA}}(\bar J) \ne \mathbb{E}\,c_{\mathrm{IMA}}(J);\ \textstyle\sum_k\log\|J_k\| - \log\det J^\top J \ne c_{\mathrm{IMA}}",
    paper="the paper's code estimates c_IMA from the batch-mean Jacobian",
    assumptions="—",
    models=("triangular", "embedding"),
    faults=("wrong_is_right",),
)
def check_n2(ctx: Context, fault: str | None) -> Results:
    out: Results = []
    for name, kind in (("triangular", "batch_mean_contrast"), ("embedding", "missing_half")):
        res = ctx.sweep(name)
        eps, gap, err = gap_eps(res)
        wrong = res[0].c_ima if fault == "wrong_is_right" else wrong_contrast(ctx, name, kind)
        inner = limit_checks("inner", eps, gap, err, wrong)
        out.append(CheckResult(f"{name}: the gap-limit check rejects the {kind.replace('_', ' ')} ({wrong:.6g} vs c_IMA {res[0].c_ima:.6g})",
                               "numerical", not all(r.passed for r in inner), None, None, "", {"wrong_contrast": wrong}, "holds"))
    from hypothesis import strategies as st

    def pred(ex):
        seed, b = ex
        from numerics.models import CallableDecoder

        # f(z) = (z1, z2 + b tanh(z1)): triangular, non-IMA for b ≠ 0
        f = CallableDecoder(lambda z: torch.stack([z[..., 0], z[..., 1] + b * torch.tanh(z[..., 0])], -1), 2, 2)
        z = torch.randn(64, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        pointwise = float(c_ima_from_jacobian(jacobian(f, z)).mean())
        bm = pointwise if fault == "wrong_is_right" else float(c_ima_batch_mean_jacobian(f, z))
        # 1e-6: both are float64 means of O(0.1) numbers (rounding ~1e-15); a real difference is O(0.01)
        return abs(pointwise - bm) > 1e-6, f"f(z) = (z1, z2 + {b} tanh z1), seed={seed}: batch-mean contrast {bm:.6g} ≈ mean c_IMA {pointwise:.6g}"

    out.append(run_property("random triangular decoders: batch-mean contrast differs from the mean pointwise c_IMA",
                            st.tuples(st.integers(0, 10**6), st.floats(0.5, 2.0)), pred, ctx.n_samples(10, 30, 100)))
    return out
