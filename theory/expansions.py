"""Small-ε expansions of log p_γ(x), ELBO*(x), the gap and the optimal encoder (docs/theory.md C7–C11, C14, C16).

Method (scaled coordinates; see docs/derivations_method.md).  Write ε = γ⁻², h = √ε,
x = f(z0), J = ∂f/∂z(z0) (n x d), M = JᵀJ, ℓ the log prior, g = ∇ℓ(z0), Hℓ = ∇²ℓ(z0),
and the Taylor polynomial f(z0 + h w) − x = h P1(w) + h² P2(w) + h³ P3(w) + O(h⁴) with
P1 = Jw, P2_i = ½ wᵀT2_i w, P3_i = ⅙ T3_i[w, w, w].  Then

* log p (C9, C16).  With z = z0 + h u the exponent ℓ(z) − ‖f(z) − x‖²/(2ε) equals
  ℓ(z0) − ½ uᵀMu + h X1(u) + h² X2(u) + O(h³), so with u ~ N(0, M⁻¹)

      log_px_red = ℓ(z0) − ½ log det M + log E[exp(h X1 + h² X2 + ...)]
                 = ℓ(z0) − ½ log det M + ε c1 + O(ε²),   c1 = E[X2] + ½ E[X1²] − ½ E[X1]².

  (E[X1] = 0 and the h³ term vanish by parity; X1, X2 are read off mechanically.)

* ELBO (C10, C16).  For q = N(z0 + ε m, ε S) put z = z0 + h w, w = h m + w', w' ~ N(0, S).
  Then ELBO_red = d/2 + ½ log det S + E[ℓ(z0 + h w) − ‖f(z0 + h w) − x‖²/(2ε)]
                = E0(S) + h·0 + ε E1(m, S) + O(ε^{3/2}),
  E0(S) = d/2 + ½ log det S − ½ tr(MS) + ℓ(z0).  Mean-field: S = diag(t).
  Stationarity gives t1_k = 1/M_kk, ELBO*_red → ℓ(z0) − Σ log‖J_k‖ (C10); m1 = argmax_m E1(m, t1);
  the O(ε) shift τ of t (s_k* = ε t1_k + ε² τ_k) solves ∂_t E0(t1 + ετ) + ε ∂_t E1(m1, t1) = O(ε²).

* gap = log p − ELBO* = c_IMA + ε a1 + O(ε²), a1 = c1 − E1(m1, t1) (C11, C16).
* Full covariance (C14): S* = M⁻¹, so the gap tends to 0; its ε-coefficient is computed too.

The expansion is local: it assumes f is injective (z0 is the only preimage of x) with J(z0) of
full column rank; for a non-injective decoder (docs/theory.md N1) it describes one posterior mode.

Everything is derived once per (n, d) in terms of Taylor-coefficient symbols (in this process,
kept in memory, never cached on disk: see :func:`generic_formulas`), then the exact
derivatives of a model at z0 are substituted; numbers enter only at the end.
"""

from __future__ import annotations

import itertools
import numbers
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

import mpmath
import sympy as sp

from .exact import EPS, c_ima_expr
from .functions import backend_functions, lambdify
from .moments import gaussian_expectation, symmetric_symbols
from .spec import SpecError, SymbolicModel, point_subs

__all__ = [
    "Expansion",
    "GenericFormulas",
    "generic_formulas",
    "expand_at",
    "expansion_symbolic",
    "refined_variance_comparison",
    "full_covariance_leading_order",
    "generic_expansion_1d",
    "numeric",
    "H_SQRT_EPS",
]

#: h = √ε, the scale of the posterior around z0.
H_SQRT_EPS = sp.Symbol("h", positive=True)


# ----------------------------------------------------------------------------------------
# Generic formulas in Taylor-coefficient symbols
# ----------------------------------------------------------------------------------------


def _sorted_key(idx: Sequence[int]) -> str:
    return "".join(str(a + 1) for a in sorted(idx))


@dataclass(frozen=True)
class GenericFormulas:
    """Generic ε-expansion coefficients for decoders R^d -> R^n, in Taylor-coefficient symbols.

    Symbols: ``J`` (n x d), ``T2[i]`` (symmetric d x d, ∂²f_i), ``T3[(i, a, b, c)]`` (symmetric,
    ∂³f_i), ``g`` (∇ℓ), ``H`` (∇²ℓ), ``Sigma`` (stands for M⁻¹), encoder ``m`` (scaled mean
    offset, μ = z0 + ε m) and ``S`` (scaled covariance, Cov q = ε S), ``t`` (diagonal of S).
    """

    n: int
    d: int
    J: sp.Matrix
    T2: tuple[sp.Matrix, ...]
    T3: dict[tuple[int, int, int, int], sp.Symbol]
    g: sp.Matrix
    H: sp.Matrix
    Sigma: sp.Matrix
    m: sp.Matrix
    S: sp.Matrix
    t: tuple[sp.Symbol, ...]
    u: tuple[sp.Symbol, ...]
    X1: sp.Expr  # h-coefficient of the log p exponent (polynomial in u)
    X2: sp.Expr  # h²-coefficient
    c1: sp.Expr  # ε-coefficient of log_px_red, in J, T2, T3, g, H, Sigma
    E1_full: sp.Expr  # ε-coefficient of ELBO_red for q = N(z0 + εm, εS)
    E1_mf: sp.Expr  # same with S = diag(t)
    elbo_h1: sp.Expr  # the h-coefficient of ELBO_red (proved 0)
    logp_h1: sp.Expr  # the h-coefficient of log_px_red, E[X1] (proved 0)
    parity_ok: bool  # X1 odd and X2 even in u (so every half-integer power of ε vanishes)

    def taylor_symbols(self) -> list[sp.Symbol]:
        syms = list(self.J) + list(self.g) + list(set(self.H))
        for T in self.T2:
            syms += list(set(T))
        syms += list(set(self.T3.values()))
        return syms


#: A truncated power series in h: coefficients of h^0, h^1, ... (sympy expressions).
Series = list


def _ser_add(a: Series, b: Series) -> Series:
    n = max(len(a), len(b))
    return [(a[k] if k < len(a) else 0) + (b[k] if k < len(b) else 0) for k in range(n)]


def _ser_mul(a: Series, b: Series, order: int) -> Series:
    """a·b through h^order (terms of higher order are never formed)."""
    out: list[Any] = [sp.Integer(0)] * min(order + 1, len(a) + len(b) - 1)
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            if i + j <= order:
                out[i + j] += ai * bj
    return out


def _ser_lin(coeffs: Sequence[sp.Expr], w: Sequence[Series]) -> Series:
    """Σ_a coeffs[a] · w[a]."""
    out: Series = [sp.Integer(0)]
    for c, wa in zip(coeffs, w):
        out = _ser_add(out, [c * x for x in wa])
    return out


def _taylor_series(
    J: sp.Matrix, T2: Sequence[sp.Matrix], T3: dict, w: Sequence[Series], orders: tuple[int, int, int]
) -> list[list[Series]]:
    """[P1, P2, P3] per output i, P_k a series in h through h^orders[k-1], for w_a given as series:
    f(z0 + h w) − f(z0) = h P1(w) + h² P2(w) + h³ P3(w) + O(h⁴),
    P1 = Jw, P2_i = ½ wᵀT2_i w, P3_i = ⅙ Σ_abc T3_iabc w_a w_b w_c."""
    n, d = J.shape
    o1, o2, o3 = orders
    P1 = [_ser_lin([J[i, a] for a in range(d)], w)[: o1 + 1] for i in range(n)]
    P2, P3 = [], []
    for i in range(n):
        p2: Series = [sp.Integer(0)]
        p3: Series = [sp.Integer(0)]
        for a in range(d):
            p2 = _ser_add(p2, _ser_mul(w[a], _ser_lin([T2[i][a, b] for b in range(d)], w), o2))
            inner: Series = [sp.Integer(0)]
            for b in range(d):
                inner = _ser_add(inner, _ser_mul(w[b], _ser_lin([T3[(i, a, b, c)] for c in range(d)], w), o3))
            p3 = _ser_add(p3, _ser_mul(w[a], inner, o3))
        P2.append([sp.Rational(1, 2) * x for x in p2])
        P3.append([sp.Rational(1, 6) * x for x in p3])
    return [P1, P2, P3]


#: Largest n²·d⁶ (the growth of the generic formulas' c1) that :func:`generic_formulas` derives:
#: measured (CPU, 2-core development machine) (4, 4) 9 s, (5, 4) 13 s, i.e. ~1.3e-4 s per unit,
#: so the limit is a few minutes ((6, 6) = 1.7e6 is allowed, d = 7 with n = 7 is not).
MAX_GENERIC_SIZE = 2_000_000


class DerivationTooLarge(SpecError):
    """The symbolic derivation of the generic formulas is refused for its size (it would take
    hours); the closed form (:func:`expand_at_floats`) gives the same numbers at any size."""


def generic_formulas(n: int, d: int) -> GenericFormulas:
    """The generic ε-expansion for an (n, d) decoder (see :func:`_generic_formulas`); refuses
    with :class:`DerivationTooLarge` when n²·d⁶ exceeds :data:`MAX_GENERIC_SIZE`."""
    size = n * n * d**6
    if size > MAX_GENERIC_SIZE:
        raise DerivationTooLarge(
            f"the symbolic derivation for n = {n}, d = {d} would take hours (n²·d⁶ = {size:.3g}, limit "
            f"{MAX_GENERIC_SIZE:.3g}, a few minutes); `gapcheck evaluate` gives the same coefficients at any d "
            "(closed form: theory.expansions.expand_at_floats)")
    return _generic_formulas(n, d)


generic_formulas.cache_clear = lambda: _generic_formulas.cache_clear()  # type: ignore[attr-defined]


@lru_cache(maxsize=16)
def _generic_formulas(n: int, d: int) -> GenericFormulas:
    """The generic ε-expansion for an (n, d) decoder (docs/theory.md C9, C10, C16), derived by
    :func:`derive_generic_formulas` in this process and kept in memory (``lru_cache``; call
    ``generic_formulas.cache_clear()`` after changing a module the derivation uses).

    There is deliberately no cache on disk.  A pickled cache runs code from whatever file sits
    at its path when it is loaded, and a cache keyed on this module alone goes stale when a
    module the derivation depends on (:mod:`theory.moments`, sympy) changes, so that a wrong
    Gaussian moment could survive in a warm cache.  Deriving is cheap enough not to need one;
    measured from scratch in a fresh process on the 2-core development machine (sympy 1.14):
    (1, 1) 0.05 s, (2, 1) 0.02 s, (2, 2) 0.2–0.4 s, (3, 2) 0.35–0.5 s, (3, 3) 1.1 s (before the
    truncated-series exponent and the Poly-free Gaussian expectations: 0.06, 0.05, 0.5, 0.85
    and 6.2–6.6 s).
    """
    return derive_generic_formulas(n, d)


def derive_generic_formulas(n: int, d: int) -> GenericFormulas:
    """Derive the generic ε-expansion for an (n, d) decoder (docs/theory.md C9, C10, C16)."""
    if n < d or d < 1:
        raise ValueError(f"need n >= d >= 1, got n={n}, d={d}")
    J = sp.Matrix(n, d, lambda i, a: sp.Symbol(f"J_{i + 1}{a + 1}", real=True))
    T2 = tuple(
        sp.Matrix(d, d, lambda a, b, i=i: sp.Symbol(f"T2_{i + 1}_{_sorted_key((a, b))}", real=True)) for i in range(n)
    )
    T3 = {
        (i,) + abc: sp.Symbol(f"T3_{i + 1}_{_sorted_key(abc)}", real=True)
        for i in range(n)
        for abc in itertools.product(range(d), repeat=3)
    }
    g = sp.Matrix(d, 1, lambda a, _: sp.Symbol(f"g_{a + 1}", real=True))
    H = symmetric_symbols("H", d, real=True)
    Sigma = symmetric_symbols("Sigma", d, real=True)
    S = symmetric_symbols("S", d, real=True)
    m = sp.Matrix(d, 1, lambda a, _: sp.Symbol(f"m_{a + 1}", real=True))
    t = tuple(sp.Symbol(f"t_{a + 1}", positive=True) for a in range(d))
    u = tuple(sp.Symbol(f"u_{a + 1}", real=True) for a in range(d))
    M = J.T * J

    def exponent(w: Sequence[Series]) -> list[sp.Expr]:
        """The h⁰, h¹, h² coefficients (expanded) of ℓ(z0 + h w) − ℓ(z0) − ‖f(z0 + h w) − x‖²/(2h²)
        for w given as a series in h.

        ‖Σ_k h^k P_k‖² / (2h²) = Σ_j h^{j−2} · ½ Σ_{k+l=j} P_k·P_l (Cauchy product), kept for
        j ≤ 4, i.e. orders h⁰..h²; the dropped terms (j ≥ 5, or involving P4, ...) are O(h³)
        for every w that is O(1) in h.  Every product is a truncated series, so no term beyond
        h² is ever formed (expanding the whole exponent and reading off its h-coefficients took
        most of the derivation time).
        """
        # orders needed: P1·P1 through h², P1·P2 through h¹, P1·P3 and P2·P2 at h⁰
        P = _taylor_series(J, T2, T3, w, (2, 1, 0))
        out: Series = [sp.Integer(0)] * 3
        for j in range(2, 5):  # the h^{j-2} term of ‖·‖²/(2h²) needs its inner series through h^{4-j}
            dot: Series = [sp.Integer(0)]
            for k in range(1, j):
                for i in range(n):
                    dot = _ser_add(dot, _ser_mul(P[k - 1][i], P[j - k - 1][i], 4 - j))
            for q, c in enumerate(dot[: 5 - j]):
                out[j - 2 + q] -= c / 2
        gw = _ser_lin(list(g), w)  # h g·w
        for q, c in enumerate(gw[:2]):
            out[1 + q] += c
        wHw = sp.Add(*[H[a, b] * w[a][0] * w[b][0] for a in range(d) for b in range(d)])  # h²/2 wᵀHw, h⁰ part of w
        out[2] += wHw / 2
        return [sp.expand(c) for c in out]

    # --- log p: exponent in u, read off X1, X2 -----------------------------------------
    ex_u = exponent([[ua] for ua in u])
    uv = sp.Matrix(u)
    if sp.expand(ex_u[0] + (uv.T * M * uv)[0, 0] / 2) != 0:
        raise AssertionError("order-h^0 term of the exponent is not -u^T M u / 2")
    X1, X2 = ex_u[1], ex_u[2]
    neg = {ui: -ui for ui in u}
    parity_ok = sp.expand(X1.xreplace(neg) + X1) == 0 and sp.expand(X2.xreplace(neg) - X2) == 0
    # log E exp(hX1 + h²X2) = h E[X1] + h² (E[X2] + ½E[X1²] − ½E[X1]²) + O(h³)
    EX1 = gaussian_expectation(X1, u, Sigma)
    EX2 = gaussian_expectation(X2, u, Sigma)
    EX1sq = gaussian_expectation(sp.expand(X1**2), u, Sigma)
    c1 = EX2 + EX1sq / 2 - EX1**2 / 2

    # --- ELBO: z = z0 + h w, w = h m + w', w' ~ N(0, S) ---------------------------------
    wp = tuple(sp.Symbol(f"w_{a + 1}", real=True) for a in range(d))
    ex_w = exponent([[wp[a], m[a]] for a in range(d)])  # w_a = w'_a + h m_a
    E0_integrand = gaussian_expectation(ex_w[0], wp, S)
    if sp.expand(E0_integrand + (M * S).trace() / 2) != 0:
        raise AssertionError("order-h^0 term of the ELBO is not -tr(MS)/2")
    elbo_h1 = gaussian_expectation(ex_w[1], wp, S)
    E1_full = gaussian_expectation(ex_w[2], wp, S)
    diag_sub = {S[a, b]: (t[a] if a == b else sp.Integer(0)) for a in range(d) for b in range(d)}
    E1_mf = sp.expand(E1_full.xreplace(diag_sub))
    return GenericFormulas(
        n=n, d=d, J=J, T2=T2, T3=T3, g=g, H=H, Sigma=Sigma, m=m, S=S, t=t, u=u,
        X1=X1, X2=X2, c1=c1, E1_full=E1_full, E1_mf=E1_mf,
        elbo_h1=sp.expand(elbo_h1), logp_h1=sp.expand(EX1), parity_ok=bool(parity_ok),
    )


# ----------------------------------------------------------------------------------------
# Model-specific substitution
# ----------------------------------------------------------------------------------------


def _prior_atoms(model: SymbolicModel, k: int) -> tuple[sp.Symbol, sp.Symbol]:
    """Symbols standing for ℓ_k'(z_k) and ℓ_k''(z_k) in symbolic expansions."""
    return sp.Symbol(f"ell'_{k + 1}", real=True), sp.Symbol(f"ell''_{k + 1}", real=True)


def _derivative_values(
    model: SymbolicModel, G: GenericFormulas, subs: dict[sp.Symbol, sp.Expr], prior_atoms: bool = False
) -> tuple[dict[sp.Symbol, sp.Expr], dict[str, Any]]:
    """Map the generic Taylor symbols to the model's derivatives at z0 (``subs`` maps latents to z0).

    With ``prior_atoms`` (symbolic expansions), a prior factor whose ℓ_k' is not a rational
    function of z_k (logistic, most custom priors) is represented by the symbols ``ell'_k``,
    ``ell''_k`` (see :func:`_prior_atoms`), which keeps the formulas readable and fast to cancel.
    """
    z = model.latents
    f = model.decoder
    ell = model.log_prior()
    vals: dict[sp.Symbol, sp.Expr] = {}
    atoms: dict[sp.Symbol, sp.Expr] = {}
    Jm = sp.zeros(G.n, G.d)
    for i in range(G.n):
        fi = f[i, 0]
        d1 = [sp.diff(fi, z[a]) for a in range(G.d)]
        for a in range(G.d):
            Jm[i, a] = d1[a].xreplace(subs)
            vals[G.J[i, a]] = Jm[i, a]
        for a, b in itertools.combinations_with_replacement(range(G.d), 2):
            d2 = sp.diff(d1[a], z[b])
            vals[G.T2[i][a, b]] = d2.xreplace(subs)
            for c in range(b, G.d):
                vals[G.T3[(i, a, b, c)]] = sp.diff(d2, z[c]).xreplace(subs)
    gvec = [sp.diff(ell, z[a]) for a in range(G.d)]
    Hm = sp.zeros(G.d, G.d)
    for a in range(G.d):
        ga, Haa = gvec[a].xreplace(subs), sp.diff(gvec[a], z[a]).xreplace(subs)
        if prior_atoms and not (gvec[a].is_rational_function(*z)):
            s1, s2 = _prior_atoms(model, a)
            atoms[s1], atoms[s2] = ga, Haa
            ga, Haa = s1, s2
        vals[G.g[a]] = ga
        Hm[a, a] = Haa
        vals[G.H[a, a]] = Haa
        for b in range(a + 1, G.d):
            Hab = sp.diff(gvec[a], z[b]).xreplace(subs)  # 0 for a factorized prior
            Hm[a, b] = Hm[b, a] = Hab
            vals[G.H[a, b]] = Hab
    info = {"J": Jm, "H": Hm, "g": sp.Matrix([vals[G.g[a]] for a in range(G.d)]), "ell0": ell.xreplace(subs), "atoms": atoms}
    return vals, info


def _tidy(expr: sp.Expr, symbolic: bool, gens: Sequence[sp.Symbol] = ()) -> sp.Expr:
    """Light simplification.

    Exact rationals evaluate by themselves.  Numeric expressions holding transcendental
    numbers (e.g. exp(3/10) from a logistic prior) are left as built: simplifying them costs
    seconds and gains nothing, since they are evaluated with ``sp.N`` anyway.  Symbolic results
    (z0 left free) are cancelled and factored when they are rational functions of ``gens``
    (the latents and prior atoms) of moderate size; anything else is left unsimplified.
    """
    expr = sp.sympify(expr)
    if expr.is_Rational or not symbolic:
        return expr
    if gens and not expr.is_rational_function(*gens):
        return expr
    if sp.count_ops(expr) <= _SYMBOLIC_CANCEL_OPS:
        try:
            return sp.factor(sp.cancel(sp.together(expr)))
        except Exception:  # pragma: no cover - sympy internals
            return expr
    return expr


def numeric(expr: sp.Expr, dps: int = 50) -> mpmath.mpf:
    """The value of a numeric sympy expression as an mpmath number.

    Rationals are exact; small expressions use sympy's ``evalf`` (guaranteed digits); large
    unsimplified ones (transcendental decoders or priors at a point) are evaluated directly in
    ``dps``-digit mpmath arithmetic, which is fast and, at 50 digits, leaves far more than the
    16 digits a float needs unless the expression cancels catastrophically.
    """
    expr = sp.sympify(expr)
    with mpmath.workdps(dps):
        if expr.is_Rational:
            return mpmath.mpf(expr.p) / expr.q
        if expr.free_symbols:
            raise ValueError(f"expression is not numeric (symbolic expansion?): {expr}")
        if sp.count_ops(expr) <= _EVALF_OPS:
            out = mpmath.mpmathify(sp.N(expr, dps))
        else:
            out = _mp_eval(expr, {}, dps)
        if isinstance(out, mpmath.mpc):
            if abs(out.imag) > mpmath.mpf(10) ** (-dps // 2) * max(1, abs(out.real)):
                raise ValueError(f"expression is not real: {out}")
            out = out.real
        return +out


#: sympy node class -> mpmath function, derived from the one function table (theory.functions);
#: any other node is evaluated by sympy's evalf at the working precision.
_MP_FUNCS: dict[type, Any] = backend_functions("mpmath", mpmath)


def _mp_eval(expr: sp.Basic, memo: dict, dps: int) -> Any:
    """Evaluate a numeric sympy tree in the current mpmath precision, memoizing shared subtrees."""
    hit = memo.get(expr)
    if hit is not None:
        return hit
    if expr.is_Rational:
        val = mpmath.mpf(expr.p) / expr.q
    elif expr is sp.pi:
        val = +mpmath.pi
    elif expr is sp.E:
        val = +mpmath.e
    elif expr.is_Add:
        val = mpmath.fsum(_mp_eval(a, memo, dps) for a in expr.args)
    elif expr.is_Mul:
        val = mpmath.fprod(_mp_eval(a, memo, dps) for a in expr.args)
    elif expr.is_Pow:
        base = _mp_eval(expr.base, memo, dps)
        e = expr.exp
        val = base ** int(e) if e.is_Integer else base ** _mp_eval(e, memo, dps)
    elif type(expr) in _MP_FUNCS and len(expr.args) == 1:
        val = _MP_FUNCS[type(expr)](_mp_eval(expr.args[0], memo, dps))
    else:
        val = mpmath.mpmathify(sp.N(expr, dps))
    memo[expr] = val
    return val


#: Numeric expressions up to this size are evaluated with sympy's evalf, larger ones with mpmath.
_EVALF_OPS = 300


def _vanishes(expr: sp.Expr, gens: Sequence[sp.Symbol] = ()) -> bool:
    """expr == 0: exactly when sympy can tell (rational numbers, rational functions, logs that
    expand to zero); numbers otherwise to 40 digits; symbolic non-rational expressions by
    evaluation at three fixed points to 40 digits (a guard, not a proof)."""
    expr = sp.sympify(expr)
    if expr == 0:
        return True
    if expr.has(sp.log) and sp.count_ops(expr) <= _EVALF_OPS:
        if sp.expand_log(sp.expand(expr), force=True) == 0:
            return True
    free = sorted(expr.free_symbols, key=str)
    if not free:
        return abs(numeric(expr, 60)) < mpmath.mpf(10) ** -40
    if expr.is_rational_function(*free):
        return sp.cancel(sp.together(expr)) == 0
    for shift in (sp.Rational(3, 7), sp.Rational(-5, 11), sp.Rational(2, 13)):
        pt = {s: shift + sp.Rational(k, 17) for k, s in enumerate(free)}
        if abs(numeric(expr.xreplace(pt), 60)) > mpmath.mpf(10) ** -40:
            return False
    return True


#: Largest symbolic expression (sympy count_ops) that :func:`_tidy` tries to cancel.
_SYMBOLIC_CANCEL_OPS = 6000


def _n30(expr: sp.Expr) -> float:
    """Float value of a numeric result (see :func:`numeric`)."""
    return float(numeric(expr, 50))


@dataclass(frozen=True)
class Expansion:
    """ε-expansion of the gap, optimal encoder, log p and ELBO* at x = f(z0) (docs/theory.md C7–C11, C14, C16).

    * gap = log p_γ(x) − ELBO*(x) = c_ima + a1 ε + O(ε²)                         (C11, C16)
    * μ* = z0 + mu1 ε + O(ε²)                                                    (C7, C16)
    * s_k* = s1_k ε + s2_k ε² + O(ε³), s1_k = 1/‖J_k‖²                           (C8, C16)
    * reduced log p = log_px[0] + log_px[1] ε + O(ε²), log_px[0] = ℓ(z0) − ½ log det M  (C9)
    * reduced ELBO* = elbo_star[0] + elbo_star[1] ε + O(ε²), elbo_star[0] = ℓ(z0) − Σ log‖J_k‖ (C10)
    * full_cov_gap0: the ε → 0 limit of the full-covariance gap (C14), proved 0; full_cov_a1 its ε-term.
    * refined_s2: ε² coefficient of the paper's refined variance (γ²‖J_k‖² − ℓ_k''(z0_k))⁻¹ (C8).

    "Reduced" = with (n−d)/2·log(γ²/2π) removed.  ``normalized`` is False when a prior factor is
    unnormalized and no ``log_normalizer`` was supplied: then log_px[0] and elbo_star[0] are
    only defined up to that constant (the gap, μ*, s* are unaffected).
    """

    model_name: str
    point: tuple[sp.Expr, ...]
    c_ima: sp.Expr
    a1: sp.Expr
    mu1: tuple[sp.Expr, ...]
    s1: tuple[sp.Expr, ...]
    s2: tuple[sp.Expr, ...]
    log_px: tuple[sp.Expr, sp.Expr]
    elbo_star: tuple[sp.Expr, sp.Expr]
    full_cov_gap0: sp.Expr
    refined_s2: tuple[sp.Expr, ...]
    full_cov_a1: sp.Expr = sp.Integer(0)
    normalized: bool = True
    symbolic: bool = False
    atoms: dict[sp.Symbol, sp.Expr] = field(default_factory=dict, compare=False, hash=False)
    checks: dict[str, bool] = field(default_factory=dict, compare=False, hash=False)

    def as_floats(self) -> dict[str, Any]:
        """JSON-ready floats: each value evaluated to ≥ 30 digits (see :func:`numeric`), then rounded."""
        fl = lambda seq: [_n30(e) for e in seq]  # noqa: E731
        return {
            "gap": [_n30(self.c_ima), _n30(self.a1)],
            "mu_star": [fl(self.point), fl(self.mu1)],
            "s_star": [fl(self.s1), fl(self.s2)],
            "log_px": fl(self.log_px),
            "elbo_star": fl(self.elbo_star),
            "full_cov_gap": [_n30(self.full_cov_gap0), _n30(self.full_cov_a1)],
            "refined_s2": fl(self.refined_s2),
            "normalized": self.normalized,
        }

    def latex(self) -> str:
        """A LaTeX ``align*`` block with z0 and every coefficient (ε = γ⁻²), rendered by the one
        renderer of symbolic results, :func:`theory.report.expansion_latex`."""
        from .report import expansion_latex  # report imports this module

        return expansion_latex(self)


def _expand(model: SymbolicModel, point: Sequence[sp.Expr], log_normalizer: sp.Expr, symbolic: bool) -> Expansion:
    G = generic_formulas(model.n, model.d)
    subs = point_subs(model, point)
    vals, info = _derivative_values(model, G, subs, prior_atoms=symbolic)
    atoms: dict[sp.Symbol, sp.Expr] = info["atoms"]
    normalized = all(p.normalized for p in model.priors) or log_normalizer != 0
    return _expand_core(
        G, model.name, tuple(sp.sympify(p) for p in point), vals, info["J"], info["H"], info["ell0"] - log_normalizer,
        atoms, tuple(model.latents) + tuple(atoms), symbolic, bool(normalized),
    )


def _expand_core(
    G: GenericFormulas,
    name: str,
    point: tuple[sp.Expr, ...],
    vals: dict[sp.Symbol, sp.Expr],
    J: sp.Matrix,
    Hm: sp.Matrix,
    ell0: sp.Expr,
    atoms: dict[sp.Symbol, sp.Expr],
    gens: tuple[sp.Symbol, ...],
    symbolic: bool,
    normalized: bool,
) -> Expansion:
    """Evaluate the generic formulas ``G`` at Taylor values ``vals`` (J, Hm: the same as matrices)."""
    d = G.d

    def tidy(e: sp.Expr) -> sp.Expr:
        return _tidy(e, symbolic, gens)

    M = (J.T * J).applyfunc(tidy)
    detM = tidy(M.det())
    if detM == 0:
        raise ValueError(f"{name}: J(z0) is rank-deficient at z0 = {tuple(point)}; the expansion needs full column rank")
    Minv = (M.inv() if not symbolic else M.adjugate() / detM).applyfunc(tidy)
    sig_sub = {G.Sigma[a, b]: Minv[a, b] for a in range(d) for b in range(d)}

    # log p (C9, C16): log_px_red = ℓ0 − ½ log det M + ε c1
    c1 = tidy(G.c1.xreplace(vals).xreplace(sig_sub))
    log_px0 = ell0 - sp.log(detM) / 2

    # mean-field ELBO (C10, C16): E0(t) = d/2 + ½Σ log t − ½ Σ t_k M_kk + ℓ0, then ε E1(m, t)
    t = G.t
    E0 = sp.Rational(d, 2) + sum(sp.log(tk) for tk in t) / 2 - sum(t[k] * M[k, k] for k in range(d)) / 2 + ell0
    # E0 is separable in t: ∂E0/∂t_k = 1/(2 t_k) − M_kk/2 vanishes at t_k = 1/M_kk (C8), written
    # directly (sympy's solve simplified its input, which took seconds for transcendental M_kk)
    mkk = sp.Symbol("M_kk_placeholder", positive=True)  # for the C8 series below
    t1 = [tidy(1 / M[k, k]) for k in range(d)]
    t1_sub = dict(zip(t, t1))
    E1 = G.E1_mf.xreplace(vals)
    grad_m = [sp.diff(E1, G.m[a]).xreplace(t1_sub) for a in range(d)]
    Amat, rhs = sp.linear_eq_to_matrix(grad_m, list(G.m))
    m1 = Amat.LUsolve(rhs).applyfunc(tidy)
    m1_sub = {G.m[a]: m1[a] for a in range(d)}
    E1_star = tidy(E1.xreplace(m1_sub).xreplace(t1_sub))
    elbo0 = ell0 - sum(sp.log(M[k, k]) for k in range(d)) / 2
    check_elbo0 = _vanishes(E0.xreplace(t1_sub) - elbo0)
    # s2 from ∂_t E0(t1 + ετ) + ε ∂_t E1(m1, t1 + ετ) = O(ε²)
    tau = sp.symbols(f"tau1:{d + 1}")
    shift = {t[j]: t1[j] + EPS * tau[j] for j in range(d)}
    eqs = []
    for k in range(d):
        stat = sp.diff(E0, t[k]).xreplace(shift) + EPS * sp.diff(E1, t[k]).xreplace(m1_sub).xreplace(shift)
        if not _vanishes(stat.subs(EPS, 0), gens):
            raise AssertionError("t1 is not stationary for E0")
        eqs.append(sp.diff(stat, EPS).subs(EPS, 0))
    # The system is linear in τ; E0 is separable in t, so its matrix is diagonal.
    Atau, btau = sp.linear_eq_to_matrix(eqs, list(tau))
    if Atau.is_diagonal():
        tau_sol = [btau[k] / Atau[k, k] for k in range(d)]
    else:  # pragma: no cover - E0 is separable, kept for safety
        tau_sol = list(Atau.LUsolve(btau))
    s2 = tuple(tidy(v) for v in tau_sol)

    # full covariance (C14): E0_full(S) = d/2 + ½ log det S − ½ tr(MS) + ℓ0, maximized at S = M⁻¹
    E0_full_star = sp.Rational(d, 2) - sp.log(detM) / 2 - tidy((M * Minv).trace()) / 2 + ell0
    # Identically 0 (proved for generic SPD M by full_covariance_leading_order); here the
    # concrete difference is checked and, when it vanishes, recorded as exact 0.
    full_cov_gap0_ok = _vanishes(log_px0 - E0_full_star)
    full_cov_gap0 = sp.Integer(0) if full_cov_gap0_ok else sp.expand_log(log_px0 - E0_full_star, force=True)
    S_sub = {G.S[a, b]: Minv[a, b] for a in range(d) for b in range(d)}
    E1f = G.E1_full.xreplace(vals).xreplace(S_sub)
    grad_f = [sp.diff(E1f, G.m[a]) for a in range(d)]
    Af, rf = sp.linear_eq_to_matrix(grad_f, list(G.m))
    mf = Af.LUsolve(rf)
    full_cov_a1 = tidy(c1 - E1f.xreplace({G.m[a]: mf[a] for a in range(d)}))

    # C8: refined variance (γ²‖J_k‖² − ℓ_k'')⁻¹ = ε/(M_kk − ε ℓ_k''): its ε² coefficient
    # (series taken with placeholder symbols, then the model's values substituted: sympy's
    # series is slow on large transcendental coefficients)
    hkk = sp.Symbol("H_kk_placeholder", real=True)
    refined_generic = sp.series(EPS / (mkk - EPS * hkk), EPS, 0, 3).removeO().coeff(EPS, 2)
    refined = tuple(tidy(refined_generic.xreplace({mkk: M[k, k], hkk: Hm[k, k]})) for k in range(d))

    ratio = tidy(sp.Mul(*[M[k, k] for k in range(d)]) / detM)
    c_ima = sp.log(ratio) / 2  # = Σ log‖J_k‖ − ½ log det M  (c_ima_expr's form)
    if not _vanishes(sp.expand_log(c_ima - c_ima_expr(J), force=True)):  # pragma: no cover - consistency guard
        raise AssertionError("c_IMA mismatch")
    a1 = tidy(c1 - E1_star)
    checks = {
        "parity": G.parity_ok,
        "elbo_half_order_zero": G.elbo_h1 == 0,
        "logp_half_order_zero": G.logp_h1 == 0,
        "elbo0_is_l0_minus_sum_log_norms": bool(check_elbo0),
        "full_cov_gap0_zero": bool(full_cov_gap0_ok),
    }
    return Expansion(
        model_name=name,
        point=point,
        c_ima=c_ima,
        a1=a1,
        mu1=tuple(m1),
        s1=tuple(t1),
        s2=s2,
        log_px=(log_px0, c1),
        elbo_star=(elbo0, E1_star),
        full_cov_gap0=full_cov_gap0,
        refined_s2=refined,
        full_cov_a1=full_cov_a1,
        normalized=normalized,
        symbolic=symbolic,
        atoms=atoms,
        checks=checks,
    )


def expand_at(model: SymbolicModel, point: Sequence[Any], log_normalizer: float | sp.Expr = 0) -> Expansion:
    """The ε-expansion (docs/theory.md C7–C11, C14, C16) of ``model`` at x = f(z0), z0 = ``point``.

    ``point`` entries are converted to exact rationals (floats, also numpy and sympy floats, via
    their shortest repr; sympy expressions such as ``sp.sqrt(2)`` are kept as they are).
    ``log_normalizer`` is subtracted from the log prior ℓ: pass log ∫exp(ℓ) for a custom
    (unnormalized) prior to get normalized log p / ELBO* constants; it changes only
    ``log_px[0]`` and ``elbo_star[0]`` (the gap, μ*, s* do not depend on it).
    """
    pt = _exact_point(point)
    if len(pt) != model.d:
        raise SpecError(f"dimension mismatch: point has {len(pt)} coordinates, model has d = {model.d}")
    return _expand(model, pt, sp.sympify(log_normalizer), symbolic=False)


def expansion_symbolic(model: SymbolicModel, log_normalizer: float | sp.Expr = 0) -> Expansion:
    """:func:`expand_at` with z0 left symbolic (z0 = the latents z1..zd): formulas valid at every z0.

    Results are cancelled/factored when they are small enough; large ones are left unsimplified.
    """
    return _expand(model, list(model.latents), sp.sympify(log_normalizer), symbolic=True)


def generic_expansion_1d() -> Expansion:
    """The expansion for a generic scalar model x = f(z) + noise, z ~ p (n = d = 1), in symbols.

    ``f1, f2, f3`` stand for the first three derivatives of f at z0 and ``l1, l2`` for ℓ', ℓ''
    (``ell0`` for ℓ(z0)).  For d = 1 mean-field is full covariance and c_IMA = 0, so the gap is
    O(ε) with a1 = full_cov_a1.
    """
    G = generic_formulas(1, 1)
    f1 = sp.Symbol("f1", positive=True)
    f2, f3, l1, l2, l0 = sp.symbols("f2 f3 l1 l2 ell0", real=True)
    vals = {G.J[0, 0]: f1, G.T2[0][0, 0]: f2, G.T3[(0, 0, 0, 0)]: f3, G.g[0]: l1, G.H[0, 0]: l2}
    return _expand_core(
        G, "generic 1-D", (sp.Symbol("z0", real=True),), vals, sp.Matrix([[f1]]), sp.Matrix([[l2]]), l0,
        {}, (f1, f2, f3, l1, l2), True, True,
    )


# ----------------------------------------------------------------------------------------
# C8 and C14 helpers
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefinedVarianceComparison:
    """C8: the ε² coefficient of s_k* (from the expansion) against the paper's refined formula."""

    s2: tuple[sp.Expr, ...]
    refined_s2: tuple[sp.Expr, ...]
    difference: tuple[sp.Expr, ...]
    equal: bool  # every coordinate equal (exactly, or to 30 digits where sympy cannot decide; see _vanishes)


def refined_variance_comparison(exp: Expansion) -> RefinedVarianceComparison:
    """Compare ``exp.s2`` with ``exp.refined_s2`` (docs/theory.md C8): equal for linear decoders only."""
    gens = tuple(exp.point) + tuple(exp.atoms)
    diffs = tuple(_tidy(a - b, exp.symbolic, gens) if exp.symbolic else sp.sympify(a - b) for a, b in zip(exp.s2, exp.refined_s2))
    eq = all(_vanishes(dd) for dd in diffs)
    return RefinedVarianceComparison(exp.s2, exp.refined_s2, diffs, eq)


@dataclass(frozen=True)
class FullCovarianceLeadingOrder:
    """C14 at leading order, for a generic symmetric positive-definite M."""

    d: int
    stationary_S: sp.Matrix
    elbo0: sp.Expr  # max_S E0_full(S) − ℓ0
    gap0: sp.Expr  # (−½ log det M) − elbo0: proved 0
    verified: bool


def full_covariance_leading_order(d: int = 2) -> FullCovarianceLeadingOrder:
    """C14 symbolically: max_S [d/2 + ½ log det S − ½ tr(MS)] = −½ log det M at S = M⁻¹.

    Solves the stationarity equations in the entries of a symmetric S for a generic symbolic M
    (d ≤ 2 solved by sympy), so the full-covariance gap tends to 0 for every decoder.  The
    stationary point is the maximum because E0 is strictly concave in S (log det is concave).
    """
    if d not in (1, 2):
        raise ValueError("full_covariance_leading_order solves d = 1 or 2")
    M = symmetric_symbols("M", d, real=True)
    M = M.xreplace({M[k, k]: sp.Symbol(f"M_{k + 1}{k + 1}", positive=True) for k in range(d)})
    S = symmetric_symbols("S", d, real=True)
    E0 = sp.Rational(d, 2) + sp.log(S.det()) / 2 - (M * S).trace() / 2
    unknowns = sorted(set(S), key=str)
    sols = sp.solve([sp.diff(E0, s) for s in unknowns], unknowns, dict=True)
    if len(sols) != 1:
        raise RuntimeError(f"unexpected stationary set: {sols}")
    Sst = S.xreplace(sols[0]).applyfunc(sp.simplify)
    ok_S = (Sst - M.inv()).applyfunc(sp.simplify) == sp.zeros(d, d)
    elbo0 = sp.simplify(E0.xreplace(sols[0]))
    gap0 = sp.simplify(sp.expand_log(-sp.log(M.det()) / 2 - elbo0, force=True))
    return FullCovarianceLeadingOrder(d, Sst, elbo0, gap0, bool(ok_S and gap0 == 0))


def prediction_functions(model: SymbolicModel, modules: str = "numpy", log_normalizer: float | sp.Expr = 0) -> dict[str, Any]:
    """Lambdified predictions: the coefficients of :func:`expansion_symbolic` as functions of
    the latent point z0 = (z1, …, zd), for ``modules`` "numpy" (float64, vectorized over
    arrays) or "mpmath" (extended precision).

    Returns {"c_ima", "a1", "log_px0", "log_px1", "elbo_star0", "elbo_star1"} (scalars) and
    {"mu1", "s1", "s2", "refined_s2"} (lists, one function per coordinate); each is called as
    ``fn(z1, …, zd)``.  Prior-derivative atoms (ℓ'_k, ℓ''_k) are replaced by their
    definitions first, so the functions depend on z0 only.
    """
    if modules not in ("numpy", "mpmath"):
        raise ValueError("modules must be 'numpy' or 'mpmath'")
    exp = expansion_symbolic(model, log_normalizer=log_normalizer)
    atoms = dict(exp.atoms)

    def lam(e: sp.Expr):
        e = sp.sympify(e).xreplace(atoms) if atoms else sp.sympify(e)
        return lambdify(model.latents, e, modules)  # the function table's numpy / mpmath functions

    return {
        "c_ima": lam(exp.c_ima),
        "a1": lam(exp.a1),
        "log_px0": lam(exp.log_px[0]),
        "log_px1": lam(exp.log_px[1]),
        "elbo_star0": lam(exp.elbo_star[0]),
        "elbo_star1": lam(exp.elbo_star[1]),
        "mu1": [lam(v) for v in exp.mu1],
        "s1": [lam(v) for v in exp.s1],
        "s2": [lam(v) for v in exp.s2],
        "refined_s2": [lam(v) for v in exp.refined_s2],
    }


# ----------------------------------------------------------------------------------------
# Closed-form evaluation at a numeric point (polynomial cost in n and d)
# ----------------------------------------------------------------------------------------
#
# The generic formulas above are polynomials in the Taylor symbols whose number of terms grows
# like n²d⁶ (c1 holds products of two T2's, two J's and three Σ's), so deriving them is only
# feasible for small (n, d).  Their Gaussian expectations are sums over Wick pairings, which
# the functions below write as tensor contractions and evaluate directly at the numbers of a
# given model and point; every quantity is the same polynomial in J, T2, T3, g, H and Σ = M⁻¹ as
# the derived one, which tests/theory/test_closed_form.py checks against the derivation.
#
# Notation as in the module docstring; rows J_i of J, w_i = ΣJ_iᵀ, P = JΣJᵀ, τ_i = tr(T2_i Σ),
# C_i = Σ T2_i, v = Σg, T3_i[w, S] = Σ_abc w_a T3_iabc S_bc.
#
#   X1 = gᵀu − ½ Σ_i (J_i u) T2_i[u, u],   X2 = ½ uᵀHu − ⅛ Σ_i T2_i[u, u]² − ⅙ Σ_i (J_i u) T3_i[u, u, u]
#   E[X2]  = ½ tr(HΣ) − ⅛ Σ_i (τ_i² + 2 tr(C_i C_i)) − ½ Σ_i T3_i[w_i, Σ]
#   E[X1²] = gᵀΣg − Σ_i ((v·J_i) τ_i + 2 vᵀT2_i w_i) + ¼ Q6,
#   Q6 = Σ_ij E[(J_i u)(J_j u) T2_i[u,u] T2_j[u,u]]
#      = Σ_ij P_ij (τ_iτ_j + 2 tr(C_iC_j)) + 4 Σ_i w_iᵀT2_i y + 4 rᵀΣr + 4 Σ_ij (T2_j w_i)ᵀ Σ (T2_i w_j),
#        y = Σ_j τ_j w_j,  r = Σ_i T2_i w_i  (the 15 pairings of a degree-6 moment),
#   c1 = E[X2] + ½ E[X1²]  (E[X1] = 0 by parity).
#
# The ELBO's ε-term for q = N(z0 + εm, εS) is E1(m, S) = κ(S) + b(S)ᵀm − ½ mᵀMm with
#   κ(S) = ½ tr(HS) − ⅛ Σ_i (tr(T2_iS)² + 2 tr((T2_iS)²)) − ½ Σ_i T3_i[S J_iᵀ, S],
#   b(S) = g − ½ Σ_i tr(T2_iS) J_iᵀ − Σ_i T2_i S J_iᵀ,
# so m* = Σ b and max_m E1 = κ + ½ bᵀΣb.  Mean field: S = diag(t1), t1_k = 1/M_kk (C8), μ1 = m*,
# ELBO*'s ε-term E1* = κ + ½ bᵀΣb, a1 = c1 − E1* (C11, C16), and the ε² term of s_k* is
# τ_k = 2 ∂_{t_k}E1(μ1, t1) / M_kk² (from ∂²E0/∂t_k² = −M_kk²/2).  Full covariance (C14): S = Σ
# gives κ(Σ) = E[X2], so full_cov_a1 = ½ E[X1²] − ½ b(Σ)ᵀΣ b(Σ).
#
# The Taylor coefficients J, T2, T3 of f and g, H of ℓ at z0 come from third-order jets of the
# expression trees (forward-mode differentiation, _JetEvaluator), so no derivative is formed
# symbolically.  Cost: O(n d³ + d⁴) arithmetic operations for the contractions plus, for the
# jets, O(k³) per node of the trees that depends on k latents.


#: Work limit of the third-order jets of one point (dictionary entries formed while the decoder
#: and the prior are evaluated; ~3 µs each at 60 digits): beyond it the prediction is skipped.
MAX_JET_WORK = 4_000_000
#: Largest arithmetic cost of the contractions of one point, n d³ + d⁴ (each stands for about three
#: 60-digit operations, ~2 µs each): at d = 30 up to n = 118 outputs, ~25 s per point.
MAX_CONTRACTION_OPS = 4_000_000
#: Working precision (decimal digits) of the closed-form evaluation.
CLOSED_FORM_DPS = 60
#: Up to this d, Taylor coefficients that are rational (polynomial decoders, rational prior
#: derivatives, rational points) are kept as exact fractions through the contractions, so that
#: coefficients that vanish come out as exact zeros; beyond it every number is a 60-digit float
#: (exact fractions of 30 x 30 systems grow to hundreds of digits).
EXACT_ARITHMETIC_MAX_D = 6


class PredictionSkipped(ValueError):
    """The closed-form prediction is refused for its size; ``str(exc)`` says why."""


# A third-order jet of a function of z at z0: (value, gradient, Hessian, third derivatives) with
# the derivatives as dicts over sorted index tuples (a), (a, b), (a, b, c), a <= b <= c, holding
# only the latents the function depends on.  Numbers are Fractions (exact) or mpmath floats.
Jet = tuple  # (v, g: dict[int, x], h: dict[tuple[int, int], x], t: dict[tuple[int, int, int], x])


class _JetBudget(Exception):
    pass


class _JetEvaluator:
    """Evaluates sympy trees of the latents as third-order jets at z0 (forward-mode automatic
    differentiation to order 3: sums, Leibniz's rule for products, Faà di Bruno's formula for
    functions of one argument, whose first three derivatives come from sympy once per function).
    Shared subtrees are evaluated once.  ``work`` counts the dictionary entries formed."""

    def __init__(self, latents: Sequence[sp.Symbol], point: Sequence[sp.Expr], budget: int) -> None:
        from fractions import Fraction

        self.F = Fraction
        self.index = {z: k for k, z in enumerate(latents)}
        self.point = [self.number(sp.sympify(v)) for v in point]
        self.memo: dict[sp.Basic, Jet] = {}
        self.work = 0
        self.budget = budget

    def number(self, e: sp.Expr) -> Any:
        """A constant as a Fraction (rational) or a 60-digit mpmath number."""
        if e.is_Rational:
            return self.F(int(e.p), int(e.q))
        return self._real(_mp_eval(e, {}, CLOSED_FORM_DPS))

    def spend(self, k: int) -> None:
        self.work += k
        if self.work > self.budget:
            raise _JetBudget

    def jet(self, e: sp.Basic) -> Jet:
        hit = self.memo.get(e)
        if hit is not None:
            return hit
        out = self._jet(e)
        self.memo[e] = out
        return out

    def _jet(self, e: sp.Basic) -> Jet:
        if e in self.index:
            return (self.point[self.index[e]], {self.index[e]: self.F(1)}, {}, {})
        if not e.free_symbols:
            return (self.number(e), {}, {}, {})
        if e.is_Add:
            parts = [self.jet(a) for a in e.args]
            v = parts[0][0]
            for p in parts[1:]:
                v = v + p[0]
            g: dict = {}
            h: dict = {}
            t: dict = {}
            for _, pg, ph, pt in parts:
                self.spend(len(pg) + len(ph) + len(pt))
                for dst, src in ((g, pg), (h, ph), (t, pt)):
                    for key, x in src.items():
                        dst[key] = dst[key] + x if key in dst else x
            return (v, g, h, t)
        if e.is_Mul:
            parts = [self.jet(a) for a in e.args]
            acc = parts[0]
            for p in parts[1:]:
                acc = self._mul(acc, p)
            return acc
        if e.is_Pow:
            base, ex = e.args
            if not ex.free_symbols:
                u = self.jet(base)
                if ex.is_Integer:
                    n = int(ex)
                    if n == 2:
                        return self._mul(u, u)
                    x = u[0]
                    c = [n, n * (n - 1), n * (n - 1) * (n - 2)]
                    ders = [x**n] + [(c[k] * x ** (n - k - 1)) if c[k] else self.F(0) for k in range(3)]
                    return self._compose(u, ders)
                pe = self.number(ex)
                x = self._mp(u[0])
                ders = [x**pe, pe * x ** (pe - 1), pe * (pe - 1) * x ** (pe - 2), pe * (pe - 1) * (pe - 2) * x ** (pe - 3)]
                return self._compose(u, [self._real(v) for v in ders])
            return self.jet(sp.exp(ex * sp.log(base), evaluate=False))  # b**w = exp(w log b)
        if len(e.args) == 1:
            u = self.jet(e.args[0])
            return self._compose(u, self._function_derivatives(type(e), u[0]))
        raise ValueError(f"cannot differentiate {type(e).__name__} ({sp.sstr(e)[:60]})")

    def _mp(self, x: Any) -> Any:
        return mpmath.mpf(x.numerator) / x.denominator if isinstance(x, self.F) else x

    @staticmethod
    def _real(v: Any) -> Any:
        if isinstance(v, mpmath.mpc):
            if abs(v.imag) > mpmath.mpf(10) ** (-CLOSED_FORM_DPS // 2) * max(1, abs(v.real)):
                raise ValueError(f"a Taylor coefficient is not real at z0 ({v})")
            return v.real
        return v

    def _function_derivatives(self, cls: type, x: Any) -> list[Any]:
        """[φ(x), φ'(x), φ''(x), φ'''(x)] for a function node class (exact for abs and sign,
        which the spec checks keep off their kinks)."""
        zero = self.F(0)
        if cls is sp.Abs:
            return [abs(x), self.F((x > 0) - (x < 0)), zero, zero]
        if cls is sp.sign:
            return [self.F((x > 0) - (x < 0)), zero, zero, zero]
        xm = self._mp(x)
        return [self._real(f(xm)) for f in _univariate_derivatives(cls)]

    def _compose(self, u: Jet, d: list[Any]) -> Jet:
        """φ(u) from d = [φ, φ', φ'', φ'''] at u's value (Faà di Bruno to order 3):
        ∂_a = φ' u_a,  ∂_ab = φ' u_ab + φ'' u_a u_b,
        ∂_abc = φ' u_abc + φ'' (u_ab u_c + u_ac u_b + u_bc u_a) + φ''' u_a u_b u_c."""
        _, ug, uh, ut = u
        d0, d1, d2, d3 = d
        keys = sorted(ug)
        k = len(keys)
        self.spend(k * (k + 1) * (k + 2) // 6 + len(uh) * k + len(ut) + len(uh) + k + 1)
        g = {a: d1 * x for a, x in ug.items()}
        h = {key: d1 * x for key, x in uh.items()}
        t = {key: d1 * x for key, x in ut.items()}
        if d2:
            for i, a in enumerate(keys):
                ua = d2 * ug[a]
                for b in keys[i:]:
                    y = ua * ug[b]
                    h[(a, b)] = h[(a, b)] + y if (a, b) in h else y
            _pair_single(t, uh, ug, d2)
        if d3:
            for i, a in enumerate(keys):
                ua = d3 * ug[a]
                for j in range(i, k):
                    b = keys[j]
                    uab = ua * ug[b]
                    for c in keys[j:]:
                        key = (a, b, c)
                        y = uab * ug[c]
                        t[key] = t[key] + y if key in t else y
        return (d0, g, h, t)

    def _mul(self, u: Jet, w: Jet) -> Jet:
        """u·w by Leibniz's rule: ∂ of the product over a set S of positions is the sum over the
        subsets R of S of ∂_R u · ∂_(S−R) w."""
        uv, ug, uh, ut = u
        wv, wg, wh, wt = w
        if not ug:  # u constant
            self.spend(len(wg) + len(wh) + len(wt) + 1)
            return (uv * wv, {key: uv * x for key, x in wg.items()}, {key: uv * x for key, x in wh.items()},
                    {key: uv * x for key, x in wt.items()})
        if not wg:
            return self._mul(w, u)
        self.spend(len(uh) * len(wg) + len(ug) * len(wh) + len(ug) * len(wg) + len(ut) + len(wt)
                   + len(ug) + len(wg) + len(uh) + len(wh) + 1)
        g: dict = {a: x * wv for a, x in ug.items()}
        for a, x in wg.items():
            y = uv * x
            g[a] = g[a] + y if a in g else y
        h: dict = {}
        for src, other in ((uh, wv), (wh, uv)):
            for key, x in src.items():
                y = x * other
                h[key] = h[key] + y if key in h else y
        for a, x in ug.items():  # u_a w_b + u_b w_a: each ordered pair once, (a, a) twice
            for b, y in wg.items():
                key = (a, b) if a <= b else (b, a)
                z = 2 * x * y if a == b else x * y
                h[key] = h[key] + z if key in h else z
        t: dict = {}
        for src, other in ((ut, wv), (wt, uv)):
            for key, x in src.items():
                y = x * other
                t[key] = t[key] + y if key in t else y
        _pair_single(t, uh, wg, 1)
        _pair_single(t, wh, ug, 1)
        return (uv * wv, g, h, t)


def _pair_single(t: dict, pairs: dict, singles: dict, factor: Any) -> None:
    """t[sorted(a, b, c)] += m · factor · pairs[(a, b)] · singles[c], m the number of times c
    occurs in the sorted key: the terms u_ab w_c + u_ac w_b + u_bc w_a of a third derivative."""
    for (a, b), x in pairs.items():
        fx = factor * x
        for c, y in singles.items():
            if c <= a:
                key = (c, a, b)
            elif c <= b:
                key = (a, c, b)
            else:
                key = (a, b, c)
            m = 1 + (a == c) + (b == c)
            z = m * fx * y
            t[key] = t[key] + z if key in t else z


@lru_cache(maxsize=None)
def _univariate_derivatives(cls: type) -> tuple[Any, ...]:
    """mpmath functions φ, φ', φ'', φ''' of a function node class of the function table
    (differentiated by sympy once per class)."""
    x = sp.Symbol("x", real=True)
    e = cls(x)
    return tuple(lambdify([x], dk, "mpmath") for dk in [e] + [sp.diff(e, x, k) for k in (1, 2, 3)])


def _exact_point(point: Sequence[Any]) -> list[sp.Expr]:
    """Point entries as exact sympy numbers (floats via their shortest repr; see :func:`expand_at`)."""
    from .spec import exact_number

    pt: list[sp.Expr] = []
    for p in point:
        if isinstance(p, sp.Float):
            pt.append(exact_number(float(p)))
        elif isinstance(p, sp.Basic):
            pt.append(p)
        elif isinstance(p, numbers.Integral):
            pt.append(sp.Integer(int(p)))
        elif isinstance(p, numbers.Real):
            pt.append(exact_number(float(p)))
        else:
            pt.append(exact_number(p))
    return pt


def _inverse(M: list[list[Any]]) -> tuple[list[list[Any]], Any]:
    """(M⁻¹, det M) by Gauss–Jordan elimination with partial pivoting, in the entries' own
    arithmetic (exact for Fractions)."""
    d = len(M)
    A = [list(row) + [1 if i == j else 0 for j in range(d)] for i, row in enumerate(M)]
    det: Any = 1
    for col in range(d):
        piv = max(range(col, d), key=lambda r: abs(A[r][col]))
        if not A[piv][col]:
            return [], 0
        if piv != col:
            A[col], A[piv] = A[piv], A[col]
            det = -det
        p = A[col][col]
        det = det * p
        row = [x / p for x in A[col]]
        A[col] = row
        for r in range(d):
            if r != col:
                f = A[r][col]
                if f:
                    Ar = A[r]
                    A[r] = [x - f * y for x, y in zip(Ar, row)]
    return [row[d:] for row in A], det


def contraction_ops(n: int, d: int) -> int:
    """Arithmetic operations of the contractions of one point (bounded by :data:`MAX_CONTRACTION_OPS`)."""
    return n * d**3 + d**4


def expand_at_floats(model: SymbolicModel, point: Sequence[Any], log_normalizer: float = 0.0,
                     checked: bool = False) -> dict[str, Any]:
    """``expand_at(model, point, log_normalizer).as_floats()`` computed in closed form (see the
    comment above): the same coefficients (docs/theory.md C7–C11, C14, C16) at a cost
    polynomial in n and d.  The Taylor coefficients of f and ℓ at z0 come from third-order
    forward-mode differentiation of their expression trees (no symbolic derivatives); the
    arithmetic is exact (fractions) where they are rational and d <= :data:`EXACT_ARITHMETIC_MAX_D`,
    else :data:`CLOSED_FORM_DPS`-digit mpmath; results are rounded to float64 at the end.

    ``checked``: the point was already checked (:func:`theory.spec.check_points`, as every
    point of a loaded spec is).  Raises :class:`PredictionSkipped` beyond the size limits
    (:data:`MAX_JET_WORK`, :data:`MAX_CONTRACTION_OPS`); the refusal is remembered in
    ``model.meta``, so later points are refused at once."""
    from fractions import Fraction

    pt = _exact_point(point)
    if len(pt) != model.d:
        raise SpecError(f"dimension mismatch: point has {len(pt)} coordinates, model has d = {model.d}")
    skipped = model.meta.get("_prediction_skipped")
    if skipped:
        raise PredictionSkipped(skipped)
    n, d = model.n, model.d
    ops = contraction_ops(n, d)
    if ops > MAX_CONTRACTION_OPS:
        reason = (f"n = {n}, d = {d}: the closed-form prediction needs ~{ops:.2g} operations per point "
                  f"(n·d³ + d⁴; limit {MAX_CONTRACTION_OPS:.2g})")
        model.meta["_prediction_skipped"] = reason
        raise PredictionSkipped(reason)
    if not checked:
        point_subs(model, pt)  # refuses points where the model is undefined, singular or on a kink
    with mpmath.workdps(CLOSED_FORM_DPS):
        ev = _JetEvaluator(model.latents, pt, MAX_JET_WORK)
        try:
            outs = [ev.jet(fi) for fi in model.decoder]
            if "_log_prior" not in model.meta:
                model.meta["_log_prior"] = model.log_prior()
            ell = ev.jet(model.meta["_log_prior"])
        except _JetBudget:
            reason = (f"n = {n}, d = {d}: the Taylor coefficients of the decoder need more than {MAX_JET_WORK} "
                      "terms per point (limit theory.expansions.MAX_JET_WORK)")
            model.meta["_prediction_skipped"] = reason
            raise PredictionSkipped(reason) from None
        ev.memo.clear()
        exact = d <= EXACT_ARITHMETIC_MAX_D and all(
            isinstance(x, Fraction) for jet in [*outs, ell] for part in jet[1:] for x in part.values())

        def num(x: Any) -> Any:
            return x if exact or not isinstance(x, Fraction) else mpmath.mpf(x.numerator) / x.denominator

        zero: Any = Fraction(0) if exact else mpmath.mpf(0)
        J = [[zero] * d for _ in range(n)]
        T2 = []
        T3 = []
        for i, (_, g_, h_, t_) in enumerate(outs):
            for a, x in g_.items():
                J[i][a] = num(x)
            A = [[zero] * d for _ in range(d)]
            for (a, b), x in h_.items():
                A[a][b] = A[b][a] = num(x)
            T2.append(A)
            T3.append({key: num(x) for key, x in t_.items() if x})
        g = [num(ell[1].get(a, zero)) for a in range(d)]
        Hd = [num(ell[2].get((a, a), zero)) for a in range(d)]
        res = _closed_form(n, d, J, T2, T3, g, Hd, zero)
        if res is None:
            raise ValueError(f"{model.name}: J(z0) is rank-deficient at z0 = {tuple(pt)}; the expansion needs full column rank")

        def mp(x: Any) -> Any:
            return mpmath.mpf(x.numerator) / x.denominator if isinstance(x, Fraction) else x

        def fl(x: Any) -> float:
            return float(mp(x))

        ell0 = mp(ell[0]) - mpmath.mpf(log_normalizer)
        Mdiag, detM = res["Mdiag"], res["detM"]
        log_px0 = ell0 - mpmath.log(mp(detM)) / 2
        elbo0 = ell0 - mpmath.fsum(mpmath.log(mp(m)) for m in Mdiag) / 2
        ratio: Any = Fraction(1) if exact else mpmath.mpf(1)
        for m in Mdiag:
            ratio = ratio * m
        c_ima = mpmath.log(mp(ratio / detM)) / 2
        normalized = all(p.normalized for p in model.priors) or log_normalizer != 0
        return {
            "gap": [float(c_ima), fl(res["a1"])],
            "mu_star": [[fl(ev.point[k]) for k in range(d)], [fl(x) for x in res["m1"]]],
            "s_star": [[fl(x) for x in res["t1"]], [fl(x) for x in res["s2"]]],
            "log_px": [float(log_px0), fl(res["c1"])],
            "elbo_star": [float(elbo0), fl(res["E1_star"])],
            "full_cov_gap": [0.0, fl(res["full_cov_a1"])],
            "refined_s2": [fl(x) for x in res["refined_s2"]],
            "normalized": bool(normalized),
        }


def _closed_form(n: int, d: int, J: list[list[Any]], T2: list[list[list[Any]]],
                 T3: list[dict[tuple[int, int, int], Any]], g: list[Any], Hd: list[Any], zero: Any) -> dict[str, Any] | None:
    """The ε-coefficients from the Taylor coefficients at z0 (formulas in the comment above);
    None when M = JᵀJ is singular.  Entries are Fractions or mpmath numbers; ``zero`` is the
    zero of that arithmetic (so that no int / int division ever makes a float)."""
    R = range(d)
    M = [[sum((J[i][a] * J[i][b] for i in range(n) if J[i][a] and J[i][b]), zero) for b in R] for a in R]
    Sig, detM = _inverse(M)
    if not detM:
        return None
    Mdiag = [M[k][k] for k in R]
    t1 = [1 / m for m in Mdiag]

    def matvec(A: list[list[Any]], x: list[Any]) -> list[Any]:
        return [sum((A[a][b] * x[b] for b in R if A[a][b] and x[b]), zero) for a in R]

    def dot(x: list[Any], y: list[Any]) -> Any:
        return sum((p * q for p, q in zip(x, y) if p and q), zero)

    nz2 = [[(a, b, A[a][b]) for a in R for b in R if A[a][b]] for A in T2]  # both triangles
    W = [matvec(Sig, J[i]) for i in range(n)]  # w_i = Σ J_iᵀ
    tau = [sum((Sig[b][a] * x for a, b, x in nz2[i]), zero) for i in range(n)]  # tr(T2_i Σ)
    v = matvec(Sig, g)
    # C_i = Σ T2_i (only for outputs with curvature), tr(C_i C_i)
    C: list[list[list[Any]] | None] = []
    trCC = []
    for i in range(n):
        if not nz2[i]:
            C.append(None)
            trCC.append(zero)
            continue
        Ci = [[zero] * d for _ in R]
        for b, c, x in nz2[i]:
            for a in R:
                s = Sig[a][b]
                if s:
                    Ci[a][c] = Ci[a][c] + s * x
        C.append(Ci)
        trCC.append(sum((Ci[a][c] * Ci[c][a] for a in R for c in R if Ci[a][c] and Ci[c][a]), zero))
    # A_a = Σ_i J_ia C_i;  S1 = Σ_ij P_ij tr(C_i C_j) = Σ_ab Σ_ab tr(A_a A_b)
    Aa = []
    for a in R:
        A = [[zero] * d for _ in R]
        for i in range(n):
            Ci = C[i]
            if Ci is None or not J[i][a]:
                continue
            j = J[i][a]
            for x in R:
                row, Ax = Ci[x], A[x]
                for y in R:
                    if row[y]:
                        Ax[y] = Ax[y] + j * row[y]
        Aa.append(A)
    S1 = zero
    for a in R:
        for b in R:
            s = Sig[a][b]
            if s:
                Ab = Aa[b]
                Aa_ = Aa[a]
                tr = sum((Aa_[x][y] * Ab[y][x] for x in R for y in R if Aa_[x][y] and Ab[y][x]), zero)
                if tr:
                    S1 = S1 + s * tr
    # U[a][c][e] = Σ_i w_ia T2_i[c][e];  S2 = Σ_ij (T2_j w_i)ᵀ Σ (T2_i w_j) = Σ_abce U[a][c][e] U[e][b][a] Σ_bc
    U = [[[zero] * d for _ in R] for _ in R]
    for i in range(n):
        if not nz2[i]:
            continue
        wi = W[i]
        for c, e, x in nz2[i]:
            for a in R:
                if wi[a]:
                    U[a][c][e] = U[a][c][e] + wi[a] * x
    S2 = zero
    for a in R:
        for e in R:
            Uae = [U[a][c][e] for c in R]
            if not any(Uae):
                continue
            # V_b = Σ_c U[a][c][e] Σ_cb
            for b in R:
                u = U[e][b][a]
                if u:
                    Vb = sum((Uae[c] * Sig[c][b] for c in R if Uae[c] and Sig[c][b]), zero)
                    if Vb:
                        S2 = S2 + Vb * u
    r = [sum((U[a][b][a] for a in R if U[a][b][a]), zero) for b in R]  # Σ_i T2_i w_i
    y = [sum((tau[i] * W[i][a] for i in range(n) if tau[i] and W[i][a]), zero) for a in R]  # Σ_j τ_j w_j
    wTy = sum((U[a][a][b] * y[b] for a in R for b in R if U[a][a][b] and y[b]), zero)  # Σ_i w_iᵀ T2_i y
    Jt_tau = [sum((J[i][a] * tau[i] for i in range(n) if J[i][a] and tau[i]), zero) for a in R]  # Jᵀτ
    Q6 = dot(Jt_tau, matvec(Sig, Jt_tau)) + 2 * S1 + 4 * wTy + 4 * dot(r, matvec(Sig, r)) + 4 * S2
    EX1sq = dot(g, v) - (dot(v, Jt_tau) + 2 * dot(v, r)) + Q6 / 4

    def t3_contract(i: int, w: list[Any], S: list[list[Any]]) -> Any:
        """T3_i[w, S] = Σ_abc T3_iabc w_a S_bc over the sorted nonzero entries."""
        tot = zero
        for (a, b, c), x in T3[i].items():
            s = zero
            for p, q, u in set(itertools.permutations((a, b, c))):
                if w[p] and S[q][u]:
                    s = s + w[p] * S[q][u]
            if s:
                tot = tot + x * s
        return tot

    T3w = sum((t3_contract(i, W[i], Sig) for i in range(n) if T3[i]), zero)
    trHS = sum((Hd[a] * Sig[a][a] for a in R if Hd[a] and Sig[a][a]), zero)
    EX2 = trHS / 2 - sum((tau[i] * tau[i] + 2 * trCC[i] for i in range(n)), zero) / 8 - T3w / 2
    c1 = EX2 + EX1sq / 2

    # full covariance: b(Σ) = g − ½ Jᵀτ − r
    bF = [g[a] - Jt_tau[a] / 2 - r[a] for a in R]
    full_cov_a1 = EX1sq / 2 - dot(bF, matvec(Sig, bF)) / 2

    # mean field, S = diag(t1)
    def t3(i: int, a: int, b: int, c: int) -> Any:
        return T3[i].get(tuple(sorted((a, b, c))), zero)

    tT = [sum((T2[i][k][k] * t1[k] for k in R if T2[i][k][k]), zero) for i in range(n)]
    trTT = [sum((x * x * t1[a] * t1[b] for a, b, x in nz2[i]), zero) for i in range(n)]
    T3mf = zero
    for i in range(n):
        if not T3[i]:
            continue
        for b in R:
            if not J[i][b]:
                continue
            for c in R:
                x = t3(i, b, c, c)
                if x:
                    T3mf = T3mf + J[i][b] * t1[b] * t1[c] * x
    kappa = sum((Hd[k] * t1[k] for k in R if Hd[k]), zero) / 2 - \
        sum((tT[i] * tT[i] + 2 * trTT[i] for i in range(n)), zero) / 8 - T3mf / 2
    bT = []
    for a in R:
        s = g[a]
        for i in range(n):
            if tT[i] and J[i][a]:
                s = s - tT[i] * J[i][a] / 2
            for k in R:
                if T2[i][a][k] and J[i][k]:
                    s = s - T2[i][a][k] * t1[k] * J[i][k]
        bT.append(s)
    m1 = matvec(Sig, bT)
    E1_star = kappa + dot(bT, m1) / 2
    a1 = c1 - E1_star
    Jm1 = [dot(J[i], m1) for i in range(n)]
    T2m1 = [matvec(T2[i], m1) if nz2[i] else [zero] * d for i in range(n)]
    s2 = []
    for k in R:
        dE = Hd[k] / 2
        for i in range(n):
            A = T2[i]
            if A[k][k]:
                dE = dE - tT[i] * A[k][k] / 4 - Jm1[i] * A[k][k] / 2
            if nz2[i]:
                dE = dE - sum((A[k][b] * A[k][b] * t1[b] for b in R if A[k][b]), zero) / 2
            if J[i][k] and T2m1[i][k]:
                dE = dE - J[i][k] * T2m1[i][k]
            if T3[i]:
                if J[i][k]:
                    dE = dE - J[i][k] * sum((t3(i, k, c, c) * t1[c] for c in R), zero) / 2
                dE = dE - sum((J[i][b] * t1[b] * t3(i, b, k, k) for b in R if J[i][b]), zero) / 2
        s2.append(2 * dE / (Mdiag[k] * Mdiag[k]))
    refined = [Hd[k] / (Mdiag[k] * Mdiag[k]) for k in R]
    return {"Mdiag": Mdiag, "detM": detM, "t1": t1, "m1": m1, "s2": s2, "c1": c1, "E1_star": E1_star, "a1": a1,
            "full_cov_a1": full_cov_a1, "refined_s2": refined}
