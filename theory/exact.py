"""Exact (all-γ) statements of docs/theory.md: C1, C2, C5, C6, and c_IMA helpers for C3/C4.

Conventions (docs/theory.md): ε = γ⁻² is the decoder *variance*, γ² its precision; encoder
variances ``s_k = σ_k²``; ``M = JᵀJ``.  "Reduced" log-likelihoods and ELBOs drop the term
``(n−d)/2 · log(γ²/2π)`` that diverges for n > d (C9, C10):

    log_px_red = log p_γ(x) − (n−d)/2 · log(γ²/2π),    ELBO_red likewise.

Everything here is exact sympy algebra; numbers enter only through the matrices the caller
passes (exact rationals recommended).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import sympy as sp

from .moments import symmetric_symbols

__all__ = [
    "EPS",
    "GAMMA2",
    "to_gamma2",
    "c_ima_expr",
    "c_ima_terms",
    "c_ima_ratio",
    "invariance_checks",
    "MeanFieldLemma",
    "mean_field_gaussian_lemma",
    "LinearGaussian",
    "linear_gaussian_first_order_generic",
    "BetaVAEIdentity",
    "beta_vae_identity",
]

#: ε = γ⁻², the decoder variance (docs/theory.md).
EPS = sp.Symbol("epsilon", positive=True)
#: γ², the decoder precision.
GAMMA2 = sp.Symbol("gamma2", positive=True)


def to_gamma2(expr: sp.Expr) -> sp.Expr:
    """Rewrite an expression in ε as one in the decoder precision γ² (ε = 1/γ²)."""
    return sp.sympify(expr).subs(EPS, 1 / GAMMA2)


# ----------------------------------------------------------------------------------------
# c_IMA (docs/theory.md "Local IMA contrast"; claims C3, C4)
# ----------------------------------------------------------------------------------------


def c_ima_terms(J: sp.Matrix) -> tuple[sp.Expr, sp.Expr]:
    """(Σ_k log‖J_k‖, ½ log det JᵀJ): the two terms of c_IMA (docs/theory.md, local IMA contrast)."""
    M = J.T * J
    col = sp.Add(*[sp.log(M[k, k]) for k in range(M.shape[0])]) / 2
    return col, sp.log(M.det()) / 2


def c_ima_expr(J: sp.Matrix) -> sp.Expr:
    """c_IMA(J) = Σ_k log‖J_k‖ − ½ log det(JᵀJ)  (docs/theory.md, local IMA contrast).

    Returned in the equivalent single-log form ``½ log(Π_k M_kk / det M)``, M = JᵀJ, so that
    exact cancellations (e.g. orthogonal columns, C12) evaluate to ``log(1) = 0`` without log
    rules.  For n = d the last term equals ``log|det J|``.
    """
    return sp.log(c_ima_ratio(J)) / 2


def c_ima_ratio(J: sp.Matrix) -> sp.Expr:
    """exp(2 c_IMA) = Π_k ‖J_k‖² / det(JᵀJ) ≥ 1 (Hadamard, C3); equal to 1 iff the columns are orthogonal."""
    M = J.T * J
    return sp.Mul(*[M[k, k] for k in range(M.shape[0])]) / M.det()


def invariance_checks(J: sp.Matrix, D: sp.Matrix, P: sp.Matrix, O: sp.Matrix) -> dict[str, bool]:
    """C4: c_IMA is unchanged by J -> JD (D diagonal, nonzero), J -> JP (permutation), J -> OJ (O orthogonal).

    Returns a dict of booleans, each True when sympy proves that exp(2 c_IMA), a rational
    function of the entries, is unchanged.
    """
    base = c_ima_ratio(J)
    same = lambda other: sp.simplify(sp.cancel(sp.together(c_ima_ratio(other) - base))) == 0  # noqa: E731
    return {
        "column_scaling": same(J * D),
        "column_permutation": same(J * P),
        "orthogonal_left": same(O * J),
    }


# ----------------------------------------------------------------------------------------
# C2: mean-field Gaussian lemma
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeanFieldLemma:
    """Result of :func:`mean_field_gaussian_lemma` (docs/theory.md C2)."""

    d: int
    precision: sp.Matrix  # generic symmetric Λ
    kl: sp.Expr  # KL(N(m, diag s) || N(μ, Λ⁻¹)) as a function of m, s
    stationary_mean: tuple[sp.Expr, ...]
    stationary_s: tuple[sp.Expr, ...]  # s_k = 1/Λ_kk
    min_kl: sp.Expr  # ½(Σ log Λ_kk − log det Λ)
    verified: bool  # sympy proved the stationary point and the minimal KL


def mean_field_gaussian_lemma(d: int) -> MeanFieldLemma:
    """C2: best mean-field Gaussian for a Gaussian target N(μ, Λ⁻¹), derived symbolically.

    KL(N(m, S) ‖ N(μ, Λ⁻¹)) = ½[tr(ΛS) + (m−μ)ᵀΛ(m−μ) − d + log det Λ⁻¹ − log det S], with
    S = diag(s).  Setting ∂/∂s_k = ½(Λ_kk − 1/s_k) = 0 and ∂/∂m = Λ(m−μ) = 0 is solved by
    sympy; substituting gives KL_min, which is checked to equal ½(Σ log Λ_kk − log det Λ).
    The stationary point is the minimum: KL is convex in m and in each s_k (∂²/∂s_k² = 1/(2s_k²)).
    """
    if not 1 <= d <= 3:
        raise ValueError("mean_field_gaussian_lemma supports 1 <= d <= 3")
    Lam = symmetric_symbols("Lambda", d, real=True)
    diag_pos = {Lam[k, k]: sp.Symbol(f"Lambda_{k + 1}{k + 1}", positive=True) for k in range(d)}
    Lam = Lam.xreplace(diag_pos)
    s = sp.symbols(f"s1:{d + 1}", positive=True)
    m = sp.Matrix(sp.symbols(f"m1:{d + 1}", real=True))
    mu = sp.Matrix(sp.symbols(f"mu1:{d + 1}", real=True))
    detL = sp.Symbol("detLambda", positive=True)  # log det Λ kept as one positive atom
    S = sp.diag(*s)
    diff = m - mu
    kl = ((Lam * S).trace() + (diff.T * Lam * diff)[0, 0] - d - sp.log(detL) - sum(sp.log(sk) for sk in s)) / 2
    s_sol = []
    for k in range(d):
        sol = sp.solve(sp.diff(kl, s[k]), s[k])
        if len(sol) != 1:
            raise RuntimeError(f"unexpected stationary set for s_{k + 1}: {sol}")
        s_sol.append(sp.simplify(sol[0]))
    grad_m = [sp.diff(kl, mk) for mk in m]
    m_sol = sp.solve(grad_m, list(m), dict=True)
    if len(m_sol) != 1:
        raise RuntimeError("unexpected stationary set for the mean")
    m_star = tuple(sp.simplify(m_sol[0][mk]) for mk in m)
    sub = {**{s[k]: s_sol[k] for k in range(d)}, **{m[k]: m_star[k] for k in range(d)}}
    kl_min = sp.expand_log(sp.simplify(kl.xreplace(sub)), force=True)
    claimed = (sum(sp.log(Lam[k, k]) for k in range(d)) - sp.log(detL)) / 2
    ok_s = all(sp.simplify(s_sol[k] - 1 / Lam[k, k]) == 0 for k in range(d))
    ok_m = all(sp.simplify(m_star[k] - mu[k]) == 0 for k in range(d))
    ok_kl = sp.simplify(kl_min - claimed) == 0
    return MeanFieldLemma(
        d=d,
        precision=Lam,
        kl=kl.xreplace({detL: Lam.det()}),
        stationary_mean=m_star,
        stationary_s=tuple(s_sol),
        min_kl=claimed.xreplace({detL: Lam.det()}),
        verified=bool(ok_s and ok_m and ok_kl),
    )


# ----------------------------------------------------------------------------------------
# C5: linear-Gaussian model
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearGaussian:
    """f(z) = A z, prior N(0, diag(v)), decoder variance ε (docs/theory.md C5).  All exact in ``EPS``.

    ``A`` is n x d of full column rank, ``v`` the prior variances.  Methods return sympy
    expressions in :data:`EPS` (use ``.subs(EPS, 1/GAMMA2)`` for γ²).
    """

    A: sp.Matrix
    v: tuple[sp.Expr, ...]

    @staticmethod
    def from_lists(A: Sequence[Sequence[object]], v: Sequence[object] | None = None) -> "LinearGaussian":
        Am = sp.Matrix([[sp.nsimplify(a, rational=True) for a in row] for row in A])
        vv = tuple(sp.nsimplify(x, rational=True) for x in (v if v is not None else [1] * Am.shape[1]))
        return LinearGaussian(Am, vv)

    @property
    def n(self) -> int:
        return self.A.shape[0]

    @property
    def d(self) -> int:
        return self.A.shape[1]

    @property
    def M(self) -> sp.Matrix:
        """M = AᵀA."""
        return self.A.T * self.A

    @property
    def V(self) -> sp.Matrix:
        return sp.diag(*self.v)

    def precision(self, eps: sp.Expr = EPS) -> sp.Matrix:
        """Posterior precision Λ = diag(1/v) + γ² AᵀA (C5)."""
        return self.V.inv() + self.M / eps

    def posterior_mean(self, z0: Sequence[sp.Expr], eps: sp.Expr = EPS) -> sp.Matrix:
        """Posterior mean Λ⁻¹ γ² Aᵀ x at x = A z0 (C5); also the optimal mean-field mean μ* (C2)."""
        z0m = sp.Matrix(z0)
        x = self.A * z0m
        return (self.precision(eps).inv() * (self.A.T * x) / eps).applyfunc(sp.simplify)

    def log_px(self, z0: Sequence[sp.Expr], eps: sp.Expr = EPS) -> sp.Expr:
        """Exact log p_γ(x), x = A z0, from p_γ(x) = N(x; 0, A diag(v) Aᵀ + ε I_n) (C5)."""
        x = self.A * sp.Matrix(z0)
        C = self.A * self.V * self.A.T + eps * sp.eye(self.n)
        quad = sp.simplify((x.T * C.inv() * x)[0, 0])
        return -quad / 2 - sp.log(sp.factor(C.det())) / 2 - sp.Rational(self.n, 2) * sp.log(2 * sp.pi)

    def log_px_reduced(self, z0: Sequence[sp.Expr], eps: sp.Expr = EPS) -> sp.Expr:
        """log p_γ(x) − (n−d)/2 log(γ²/2π), via the determinant lemma and Woodbury (C5, C9).

        det(εI_n + AVAᵀ) = ε^{n−d} det(εI_d + VM) and
        xᵀ(εI_n + AVAᵀ)⁻¹x = z0ᵀ(M − M(εV⁻¹ + M)⁻¹M)z0 / ε  for x = A z0,
        so the divergent ε^{n−d} factor cancels exactly against (n−d)/2 log(2πε).
        """
        z = sp.Matrix(z0)
        M = self.M
        K = eps * self.V.inv() + M
        quad = sp.simplify(((z.T * (M - M * K.inv() * M) * z)[0, 0]) / eps)
        logdet = sp.log(sp.factor((sp.eye(self.d) * eps + self.V * M).det()))
        return -quad / 2 - logdet / 2 - sp.Rational(self.d, 2) * sp.log(2 * sp.pi)

    def mean_field_variances(self, eps: sp.Expr = EPS) -> tuple[sp.Expr, ...]:
        """Optimal mean-field variances s_k* = 1/Λ_kk (C2 applied to C5)."""
        L = self.precision(eps)
        return tuple(sp.simplify(1 / L[k, k]) for k in range(self.d))

    def gap(self, eps: sp.Expr = EPS) -> sp.Expr:
        """log p_γ(x) − ELBO*(x) = ½(Σ log Λ_kk − log det Λ), independent of x (C2, C5).

        Written with the common factor ε⁻ᵈ removed from both logs (exactly):
        ½[Σ log(ε/v_k + M_kk) − log det(εV⁻¹ + M)].
        """
        K = eps * self.V.inv() + self.M
        return (sp.Add(*[sp.log(K[k, k]) for k in range(self.d)]) - sp.log(sp.factor(K.det()))) / 2

    def elbo(self, z0: Sequence[sp.Expr], mu: Sequence[sp.Expr], s: Sequence[sp.Expr], eps: sp.Expr = EPS) -> sp.Expr:
        """Closed-form ELBO(x; μ, s) (docs/theory.md definition) for the linear-Gaussian model.

        E_q‖x − Az‖² = ‖x − Aμ‖² + Σ_k s_k M_kk,  E_q ℓ = Σ_k [−(μ_k² + s_k)/(2v_k) − ½ log 2πv_k],
        entropy ½ Σ_k log(2πe s_k).  Independent of the gap formula; used to check C1/C2.
        """
        x = self.A * sp.Matrix(z0)
        mu_m = sp.Matrix(mu)
        r = x - self.A * mu_m
        M = self.M
        rec = -sp.Rational(self.n, 2) * sp.log(2 * sp.pi * eps) - ((r.T * r)[0, 0] + sum(s[k] * M[k, k] for k in range(self.d))) / (2 * eps)
        pri = sum(-(mu_m[k] ** 2 + s[k]) / (2 * self.v[k]) - sp.log(2 * sp.pi * self.v[k]) / 2 for k in range(self.d))
        ent = sum(sp.log(2 * sp.pi * sp.E * s[k]) / 2 for k in range(self.d))
        return rec + pri + ent

    def elbo_star(self, z0: Sequence[sp.Expr], eps: sp.Expr = EPS) -> sp.Expr:
        """ELBO*(x) = log p_γ(x) − gap (C1 with the optimal mean-field q of C2)."""
        return self.log_px(z0, eps) - self.gap(eps)

    def elbo_star_reduced(self, z0: Sequence[sp.Expr], eps: sp.Expr = EPS) -> sp.Expr:
        """ELBO*(x) − (n−d)/2 log(γ²/2π)."""
        return self.log_px_reduced(z0, eps) - self.gap(eps)

    def c_ima(self) -> sp.Expr:
        """c_IMA(A), the ε → 0 limit of :meth:`gap` (C5)."""
        return c_ima_expr(self.A)

    def gap_first_order(self) -> sp.Expr:
        """ε-coefficient of the gap: ½(Σ_k 1/(v_k M_kk) − tr(V⁻¹M⁻¹)); for v = 1 ½(Σ 1/M_kk − tr M⁻¹) (C5)."""
        M = self.M
        Vi = self.V.inv()
        return sp.simplify((sum(Vi[k, k] / M[k, k] for k in range(self.d)) - (Vi * M.inv()).trace()) / 2)

    def series(self, expr: sp.Expr, order: int = 2) -> list[sp.Expr]:
        """Coefficients [c0, c1, ..., c_{order-1}] of the Taylor series of ``expr`` in EPS at 0."""
        ser = sp.series(expr, EPS, 0, order).removeO()
        return [sp.simplify(ser.coeff(EPS, k)) for k in range(order)]

    def variance_series(self, order: int = 3) -> list[list[sp.Expr]]:
        """Per coordinate, the ε-series coefficients of s_k* = 1/Λ_kk (s1 = 1/M_kk, s2 = −1/(v_k M_kk²))."""
        return [self.series(sk, order) for sk in self.mean_field_variances()]

    def mean_series(self, z0: Sequence[sp.Expr], order: int = 2) -> list[list[sp.Expr]]:
        """Per coordinate, the ε-series coefficients of μ* (μ1 = M⁻¹ g, g = −V⁻¹ z0)."""
        return [self.series(mk, order) for mk in self.posterior_mean(z0)]


def linear_gaussian_first_order_generic(d: int) -> tuple[sp.Expr, bool]:
    """C5 generically: for symbolic SPD M and v = 1, d/dε of ½(Σ log(ε+M_kk) − log det(εI+M)) at 0.

    Returns (coefficient, verified) where verified says sympy proved it equals
    ½(Σ_k 1/M_kk − tr M⁻¹).
    """
    M = symmetric_symbols("M", d, real=True)
    M = M.xreplace({M[k, k]: sp.Symbol(f"M_{k + 1}{k + 1}", positive=True) for k in range(d)})
    gap = (sp.Add(*[sp.log(EPS + M[k, k]) for k in range(d)]) - sp.log((EPS * sp.eye(d) + M).det())) / 2
    coeff = sp.simplify(sp.diff(gap, EPS).subs(EPS, 0))
    claimed = (sum(1 / M[k, k] for k in range(d)) - M.inv().trace()) / 2
    return coeff, sp.simplify(coeff - claimed) == 0


# ----------------------------------------------------------------------------------------
# C6: β-VAE identity
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BetaVAEIdentity:
    """Result of :func:`beta_vae_identity` (docs/theory.md C6)."""

    constant: sp.Expr  # β-ELBO(γ²) − β·ELBO(γ²/β)
    claimed: sp.Expr  # n/2 log(γ²/2π) − βn/2 log(γ²/(2πβ))
    verified: bool


def beta_vae_identity() -> BetaVAEIdentity:
    """C6: β-ELBO(γ²) = β·ELBO(γ²/β) + n/2·log(γ²/2π) − (βn/2)·log(γ²/(2πβ)).

    With R = E_q‖x − f(z)‖² and K = KL(q ‖ p0) left as symbols (they do not depend on γ),
    E_q log p_γ(x|z) = n/2 log(γ²/2π) − γ² R/2, so
    β-ELBO(γ²) = n/2 log(γ²/2π) − γ²R/2 − βK and ELBO(γ²/β) = n/2 log(γ²/(2πβ)) − γ²R/(2β) − K.
    The difference is free of R and K, hence the maximizing q is the same (C6).
    """
    n, beta, R, K = sp.symbols("n beta R K", positive=True)
    rec = lambda g2: n / 2 * sp.log(g2 / (2 * sp.pi)) - g2 * R / 2  # noqa: E731
    beta_elbo = rec(GAMMA2) - beta * K
    elbo_scaled = rec(GAMMA2 / beta) - K
    const = sp.expand_log(sp.simplify(sp.expand(beta_elbo - beta * elbo_scaled)), force=True)
    claimed = n / 2 * sp.log(GAMMA2 / (2 * sp.pi)) - beta * n / 2 * sp.log(GAMMA2 / (2 * sp.pi * beta))
    free = not (const.has(R) or const.has(K))
    ok = free and sp.simplify(sp.expand_log(const - claimed, force=True)) == 0
    return BetaVAEIdentity(const, claimed, bool(ok))
