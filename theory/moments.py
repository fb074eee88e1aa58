"""Exact Gaussian moments of polynomials (the workhorse of :mod:`theory.expansions`).

For ``u ~ N(0, Σ)`` in ``R^d`` and a multi-index ``α`` with ``|α| = 2m``,

    E[u^α] = α! · [t^α] (½ tᵀΣt)^m / m!,

which is the coefficient form of the moment generating function ``E[exp(tᵀu)] = exp(½ tᵀΣt)``;
odd moments vanish.  ``Σ`` may hold symbols (generic formulas) or numbers.  Used for the
Laplace-type expansions of docs/theory.md claims C9–C11, C14, C16.
"""

from __future__ import annotations

from functools import lru_cache
from math import factorial
from typing import Iterable, Sequence

import sympy as sp

__all__ = ["gaussian_moment", "gaussian_expectation", "symmetric_symbols"]


def symmetric_symbols(name: str, d: int, **assumptions: bool) -> sp.Matrix:
    """A symmetric d x d matrix of fresh symbols ``name_ij`` (i <= j), shared across the diagonal."""
    rows = [[sp.Symbol(f"{name}_{min(i, j) + 1}{max(i, j) + 1}", **assumptions) for j in range(d)] for i in range(d)]
    return sp.Matrix(rows)


@lru_cache(maxsize=256)
def _mgf_power_coefficients(cov_entries: tuple[sp.Expr, ...], d: int, m: int) -> dict[tuple[int, ...], sp.Expr]:
    """Coefficients of (½ tᵀΣt)^m / m! as a dict monomial -> coefficient (Σ given row-major)."""
    t = sp.symbols(f"_t0:{d}")
    cov = sp.Matrix(d, d, list(cov_entries))
    quad = sp.Rational(1, 2) * sum(cov[i, j] * t[i] * t[j] for i in range(d) for j in range(d))
    poly = sp.Poly(sp.expand(quad**m), *t) if m > 0 else sp.Poly(sp.Integer(1), *t)
    return {monom: coeff / factorial(m) for monom, coeff in poly.terms()}


def gaussian_moment(alpha: Sequence[int], cov: sp.Matrix) -> sp.Expr:
    """E[Π_k u_k^{α_k}] for u ~ N(0, cov); zero for odd total degree."""
    alpha = tuple(int(a) for a in alpha)
    d = cov.shape[0]
    if len(alpha) != d:
        raise ValueError(f"multi-index of length {len(alpha)} for a {d}-dimensional Gaussian")
    total = sum(alpha)
    if total % 2:
        return sp.Integer(0)
    coeffs = _mgf_power_coefficients(tuple(cov), d, total // 2)
    c = coeffs.get(alpha, sp.Integer(0))
    afact = 1
    for a in alpha:
        afact *= factorial(a)
    return afact * c


def gaussian_expectation(expr: sp.Expr, variables: Iterable[sp.Symbol], cov: sp.Matrix) -> sp.Expr:
    """E[expr] for ``variables ~ N(0, cov)``; ``expr`` must be polynomial in ``variables``.

    The coefficients (which may contain any other symbols) are kept unexpanded, multiplied by
    the exact moments of :func:`gaussian_moment`, and summed.
    """
    variables = tuple(variables)
    terms = []
    for monom, coeff in _monomial_coefficients(sp.expand(expr), variables).items():
        mom = gaussian_moment(monom, cov)
        if mom != 0:
            terms.append(coeff * mom)
    return sp.Add(*terms)


def _monomial_coefficients(expanded: sp.Expr, variables: tuple[sp.Symbol, ...]) -> dict[tuple[int, ...], sp.Expr]:
    """{exponents of ``variables``: coefficient} of an expanded polynomial in ``variables``.

    The same as ``sp.Poly(expanded, *variables).terms()`` (coefficients as expanded sums), read
    off term by term: building a Poly constructs a polynomial ring over every other symbol in
    the coefficients, which took most of the time of the generic derivations."""
    index = {v: k for k, v in enumerate(variables)}
    groups: dict[tuple[int, ...], list[sp.Expr]] = {}
    for term in sp.Add.make_args(expanded):
        exps = [0] * len(variables)
        coeff = []
        for factor in sp.Mul.make_args(term):
            base, e = factor.as_base_exp()
            k = index.get(base)
            if k is None:
                if factor.has(*variables):
                    raise ValueError(f"gaussian_expectation needs a polynomial in {variables}, got the factor {factor}")
                coeff.append(factor)
            elif e.is_Integer and e >= 0:
                exps[k] += int(e)
            else:
                raise ValueError(f"gaussian_expectation needs a polynomial in {variables}, got the factor {factor}")
        groups.setdefault(tuple(exps), []).append(sp.Mul(*coeff))
    return {monom: sp.Add(*cs) for monom, cs in groups.items() if any(c != 0 for c in cs)}
