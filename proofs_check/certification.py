"""`gapcheck certify`: proven enclosures (Arb balls) of log p_γ(x), ELBO*(x) for the
mean-field and the full-covariance Gaussian encoder, the gaps and c_IMA for a model spec with
d ≤ 2 latents (numerics.certified does the integration).

This module joins the two sides: it translates the spec's sympy expressions into ball
arithmetic (:func:`to_arb`), derives polynomial growth bounds |h(z)| ≤ P(‖z‖∞) for the tail
bounds (:func:`growth_bound`), differentiates φ symbolically for the ELBO's gradient and
Hessian, runs the fast path (numerics.posterior / numerics.elbo) only for *hints* (posterior
modes and scales, the optimal encoders), and writes rows shaped like `evaluate`'s with each
quantity an interval of decimal strings rounded outward.

Statuses: "certified" (a proven two-sided enclosure), "lower bound only" (ELBO*: the ELBO at
the fast optimum is a proven lower bound of the supremum, the local maximum was not
certified), "upper bound only" (the gap, then), "not certified: <reason>".
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, localcontext
from pathlib import Path
from typing import Any

import sympy as sp
from flint import acb, arb, fmpq, fmpz

from numerics.certified import (
    CertPrior1D,
    CertProblem,
    NotCertified,
    PhiDerivatives,
    arb_function,
    c_ima_ball,
    certify_elbo_at,
    certify_elbo_star,
    certify_elbo_star_fullcov,
    certify_log_px,
    exact_float,
    exact_rational,
    int_power,
    real_power,
    rel_radius,
    square,
    working_precision,
)
from theory.spec import PRIOR_VARIABLE, SpecError, SymbolicModel

from .cli_parsers import add_certify_parser  # noqa: F401 (re-exported: the parser lives apart, see there)

Num = Any
STATUS_OK = "certified"
STATUS_LOWER = "lower bound only"
STATUS_UPPER = "upper bound only"
QUANTITIES = ("log_px", "elbo_star", "gap", "c_ima")
#: Quantities added by ``full_cov`` (the full-covariance Gaussian encoder, THEORY C14).
FULLCOV_QUANTITIES = ("elbo_star_fullcov", "gap_fullcov")


# ----------------------------------------------------------------------------------------
# sympy -> arb
# ----------------------------------------------------------------------------------------


def _arb_names() -> dict[type, str]:
    """sympy function class -> name of its rigorous ball implementation
    (numerics.certified.ARB_FUNCTIONS), derived from the one function table
    (theory.functions, column ``python_flint_arb``).  The table names arb's own method; the
    ball implementations are keyed by the plain name (``__abs__`` -> ``abs``).  A function
    without a rigorous implementation (e.g. ``sign``) is left out, and a spec using it is
    refused as not certifiable."""
    from numerics.certified import ARB_FUNCTIONS
    from theory.functions import FUNCTIONS

    out: dict[type, str] = {}
    for f in FUNCTIONS:
        if f.sympy_class is None or f.python_flint_arb is None:
            continue
        name = f.python_flint_arb.strip("_")
        if name in ARB_FUNCTIONS:
            out[f.sympy_class] = name
    return out


def sympy_number_to_arb(e: sp.Expr) -> arb:
    """An exact-as-possible ball for a sympy number: integers and rationals exactly (a
    rational with a non-dyadic denominator as a tight ball), Floats as the exact binary value
    they hold, π and e as Arb constants."""
    if e.is_Integer:
        return arb(fmpz(int(e)))
    if e.is_Rational:
        return exact_rational(int(e.p), int(e.q))
    if e.is_Float:
        sign, man, exp_, _bc = e._mpf_
        if man == 0:
            return arb(0)
        v = arb(fmpz(int(man)))
        v = v * arb(fmpq(2**exp_, 1)) if exp_ >= 0 else v * arb(fmpq(1, 2 ** (-exp_)))
        return -v if sign else v
    if e is sp.pi:
        return arb.pi()
    if e is sp.E:
        return arb.const_e()
    raise SpecError(f"cannot translate the constant {e} to ball arithmetic")


def to_arb(
    expr: sp.Expr,
    symbols: Sequence[sp.Symbol],
    params: Mapping[sp.Symbol, arb] | None = None,
    names: Mapping[type, str] | None = None,
) -> Callable[[Sequence[Num]], Num]:
    """Compile ``expr`` into ``fn(args)`` evaluating it in ball arithmetic (``args[k]`` an
    arb or acb for ``symbols[k]``); ``params`` bind further symbols to balls.  See
    :func:`compile_arb` (this is its one-expression form)."""
    fn = compile_arb([expr], symbols, params, names, cse=False)
    return lambda a: fn(a)[0]


def compile_arb(
    exprs: Sequence[sp.Expr],
    symbols: Sequence[sp.Symbol],
    params: Mapping[sp.Symbol, arb] | None = None,
    names: Mapping[type, str] | None = None,
    cse: bool = True,
) -> Callable[[Sequence[Num]], list[Num]]:
    """Compile several expressions into one ``fn(args) -> [values]`` in ball arithmetic,
    sharing common subexpressions (sympy.cse).

    Handled: Add, Mul, Pow (integer exponents by repeated squaring, 1/2 as sqrt, other
    rational or symbolic exponents as the principal power), numbers
    (:func:`sympy_number_to_arb`), symbols, and the functions in ``names`` (sympy class ->
    arb name, default :func:`_arb_names`; each evaluated by numerics.certified.arb_function,
    which guards branch cuts on complex balls).  Constant subtrees are evaluated once, at the
    precision current at compile time, and kept both as arb and as acb (mixing the two
    types costs a conversion per operation).  Anything else raises SpecError."""
    names = dict(_arb_names() if names is None else names)
    params = dict(params or {})
    exprs = [sp.sympify(e) for e in exprs]
    if cse:
        reps, outs = sp.cse(exprs, symbols=sp.numbered_symbols("_cse"), order="none")
    else:
        reps, outs = [], exprs
    slots = {s: k for k, s in enumerate(symbols)}
    real_prog: list = []
    cplx_prog: list = []
    consts: dict[sp.Symbol, arb] = {}
    for sym_, e in reps:
        c, fr, fc = _build(e, slots, params, consts, names)
        if c is not None:
            consts[sym_] = c
        else:
            slots[sym_] = len(symbols) + len(real_prog)
            real_prog.append(fr)
            cplx_prog.append(fc)
    real_out, cplx_out = [], []
    for e in outs:
        c, fr, fc = _build(e, slots, params, consts, names)
        if c is not None:
            cc = acb(c)
            real_out.append(lambda v, c=c: c)
            cplx_out.append(lambda v, cc=cc: cc)
        else:
            real_out.append(fr)
            cplx_out.append(fc)

    def run(args: Sequence[Num]) -> list[Num]:
        cplx = any(isinstance(a, acb) for a in args)
        vals = [acb(a) for a in args] if cplx else list(args)
        for f in (cplx_prog if cplx else real_prog):
            vals.append(f(vals))
        return [f(vals) for f in (cplx_out if cplx else real_out)]

    return run


def _build(e: sp.Basic, slots: Mapping[sp.Symbol, int], params: Mapping[sp.Symbol, arb], consts: Mapping[sp.Symbol, arb],
           names: Mapping[type, str]) -> tuple[arb | None, Any, Any]:
    """(constant, None, None) for a constant subtree, else (None, real_fn, complex_fn) with
    fn(vals) evaluating ``e`` from the slot values."""

    def build(e: sp.Basic, cplx: bool):
        """Returns (is_const, arb value) or (False, fn)."""
        if e in slots:
            k = slots[e]
            return False, (lambda v, k=k: v[k])
        if e in consts:
            return True, consts[e]
        if e in params:
            return True, params[e]
        if e.is_Number or e.is_NumberSymbol:
            return True, sympy_number_to_arb(e)
        if isinstance(e, sp.Add):
            parts = [build(t, cplx) for t in e.args]
            c = sum((v for is_c, v in parts if is_c), arb(0))
            fns = [v for is_c, v in parts if not is_c]
            if not fns:
                return True, c
            exact_zero = c == 0 and c.is_exact()
            return False, _sum_fn(fns, None if exact_zero else (acb(c) if cplx else c))
        if isinstance(e, sp.Mul):
            parts = [build(t, cplx) for t in e.args]
            c = arb(1)
            for is_c, v in parts:
                if is_c:
                    c = c * v
            fns = [v for is_c, v in parts if not is_c]
            if not fns:
                return True, c
            one = c == 1 and c.is_exact()
            return False, _prod_fn(fns, None if one else (acb(c) if cplx else c))
        if isinstance(e, sp.Pow):
            bc, base = build(e.base, cplx)
            ex = e.exp
            if ex.is_Integer:
                n = int(ex)
                if bc:
                    return True, int_power(base, n)
                if n == 2:
                    return False, (lambda v, base=base: _sq(base(v)))
                if n == -1:
                    one = acb(1) if cplx else arb(1)
                    return False, (lambda v, base=base, one=one: one / base(v))
                return False, (lambda v, base=base, n=n: int_power(base(v), n))
            if ex == sp.Rational(1, 2):
                sq = arb_function("sqrt")
                if bc:
                    return True, sq(base)
                return False, (lambda v, base=base: sq(base(v)))
            xc, xv = build(ex, cplx)
            if xc:
                if bc:
                    return True, real_power(base, xv)
                return False, (lambda v, base=base, q=xv: real_power(base(v), q))
            lg, ex_ = arb_function("log"), arb_function("exp")
            bv = (acb(base) if cplx else base) if bc else None
            bf = (lambda v, bv=bv: bv) if bc else base
            return False, (lambda v, bf=bf, xv=xv: ex_(xv(v) * lg(bf(v))))
        name = names.get(type(e)) or names.get(getattr(e, "func", None))
        if name is not None and len(e.args) == 1:
            fn = arb_function(name)
            ic, inner = build(e.args[0], cplx)
            if ic:
                return True, fn(inner)
            return False, (lambda v, fn=fn, inner=inner: fn(inner(v)))
        raise SpecError(f"cannot translate {type(e).__name__} ({e}) to ball arithmetic")

    is_c, v = build(e, False)
    if is_c:
        return v, None, None
    _, vc = build(e, True)
    return None, v, vc


def _sq(a: Num) -> Num:
    return square(a)


def _sum_fn(fns: list, c: Any = None):
    if len(fns) == 1:
        f0 = fns[0]
        base = f0
    elif len(fns) == 2:
        f0, f1 = fns
        base = lambda v: f0(v) + f1(v)
    else:
        def base(v):
            acc = fns[0](v)
            for f in fns[1:]:
                acc = acc + f(v)
            return acc
    if c is None:
        return base
    return lambda v: base(v) + c


def _prod_fn(fns: list, c: Any = None):
    if len(fns) == 1:
        base = fns[0]
    elif len(fns) == 2:
        f0, f1 = fns
        base = lambda v: f0(v) * f1(v)
    else:
        def base(v):
            acc = fns[0](v)
            for f in fns[1:]:
                acc = acc * f(v)
            return acc
    if c is None:
        return base
    return lambda v: c * base(v)


# ----------------------------------------------------------------------------------------
# Polynomial growth bounds |h(z)| <= P(||z||_inf) for the Gaussian tails
# ----------------------------------------------------------------------------------------


class Unbounded(Exception):
    """No polynomial growth bound could be derived (the reason is the message)."""


Poly = list  # list[arb] of non-negative coefficient upper bounds


def _padd(p: Poly, q: Poly) -> Poly:
    n = max(len(p), len(q))
    return [(p[i] if i < len(p) else arb(0)) + (q[i] if i < len(q) else arb(0)) for i in range(n)]


def _pmul(p: Poly, q: Poly) -> Poly:
    out = [arb(0)] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] = out[i + j] + a * b
    return out


def _ppow(p: Poly, n: int) -> Poly:
    out: Poly = [arb(1)]
    for _ in range(n):
        out = _pmul(out, p)
    return out


def _up(a: arb) -> arb:
    return arb(abs(a).upper())


class _Bounds:
    """Growth, lower and upper bounds of sympy expressions over all real z."""

    def __init__(self, symbols: Sequence[sp.Symbol], params: Mapping[sp.Symbol, arb], names: Mapping[type, str]):
        self.symbols = set(symbols)
        self.params = dict(params)
        self.names = dict(names)

    def _const(self, e: sp.Expr) -> arb | None:
        if e.free_symbols & self.symbols:
            return None
        return to_arb(e, [], self.params, self.names)([])

    def lower(self, e: sp.Expr) -> arb | None:
        """A constant c with e(z) >= c for all real z, or None."""
        c = self._const(e)
        if c is not None:
            return arb(c.lower()) if c.is_finite() else None
        if isinstance(e, sp.Add):
            parts = [self.lower(t) for t in e.args]
            return None if any(p is None for p in parts) else sum(parts, arb(0))
        if isinstance(e, sp.Pow) and e.exp.is_Integer and int(e.exp) % 2 == 0 and int(e.exp) > 0:
            return arb(0)
        if isinstance(e, sp.Mul):
            parts = [self.lower(t) for t in e.args]
            if all(p is not None and p >= 0 for p in parts):
                out = arb(1)
                for p in parts:
                    out = out * p
                return arb(out.lower())
            return None
        name = self.names.get(type(e))
        if name in ("exp", "abs"):
            return arb(0)
        if name == "cosh":
            return arb(1)
        if name in ("tanh", "sin", "cos", "erf"):
            return arb(-1)
        if name == "atan":
            return -arb.pi() / 2
        return None

    def upper(self, e: sp.Expr) -> arb | None:
        """A constant c with e(z) <= c for all real z, or None."""
        c = self._const(e)
        if c is not None:
            return arb(c.upper()) if c.is_finite() else None
        if isinstance(e, sp.Add):
            parts = [self.upper(t) for t in e.args]
            return None if any(p is None for p in parts) else sum(parts, arb(0))
        if isinstance(e, sp.Mul):
            consts = [t for t in e.args if not (t.free_symbols & self.symbols)]
            rest = [t for t in e.args if t.free_symbols & self.symbols]
            k = self._const(sp.Mul(*consts)) if consts else arb(1)
            r = sp.Mul(*rest)
            if k is not None and k <= 0:
                lo = self.lower(r)
                if lo is not None and lo >= 0:
                    return arb((k * lo).upper())
            return None
        name = self.names.get(type(e))
        if name in ("tanh", "sin", "cos", "erf"):
            return arb(1)
        if name == "atan":
            return arb.pi() / 2
        return None

    def growth(self, e: sp.Expr) -> Poly:
        try:
            return self._growth(e)
        except Unbounded:
            if isinstance(e, (sp.Add, sp.Mul, sp.Pow)):
                b = self._exp_rational(e)
                if b is not None:
                    return [b]
            raise

    def _exp_rational(self, e: sp.Expr) -> arb | None:
        """sup over real t of |e| when e depends on one latent t only through exponentials
        exp(α_i t + β_i) with rational α_i: with E = exp(t/L) (1/L the gcd of the α_i) e is a
        rational function N(E)/D(E); if D has non-negative coefficients with d_0, d_top > 0 and
        deg N <= deg D, then |N/D| <= Σ|n_i| / min(d_0, d_top) for every E > 0 (split at E = 1).
        Covers e.g. every derivative of a logistic log-density however sympy arranges it."""
        free = e.free_symbols & self.symbols
        if len(free) != 1:
            return None
        t = next(iter(free))
        exps = [a for a in e.atoms(sp.exp) if t in a.free_symbols]
        if not exps:
            return None
        alphas, betas = [], []
        for a in exps:
            arg = sp.expand(a.args[0])
            al = arg.coeff(t, 1)
            be = sp.expand(arg - al * t)
            if not al.is_Rational or al == 0 or t in be.free_symbols:
                return None
            alphas.append(al)
            betas.append(be)
        num = math.gcd(*[abs(int(a.p)) for a in alphas])
        den = math.lcm(*[int(a.q) for a in alphas])
        step = sp.Rational(num, den)
        E = sp.Dummy("E", positive=True)
        rep = {a: sp.exp(be) * E ** int(al / step) for a, al, be in zip(exps, alphas, betas)}
        r = e.xreplace(rep)
        if t in r.free_symbols:
            return None
        N, D = sp.fraction(sp.cancel(sp.together(r)))
        try:
            Np, Dp = sp.Poly(N, E), sp.Poly(D, E)
        except sp.PolynomialError:
            return None
        dc = [self._const(c) for c in Dp.all_coeffs()[::-1]]  # d_0 .. d_top
        nc = [self._const(c) for c in Np.all_coeffs()]
        if any(c is None or not c.is_finite() for c in dc + nc) or Np.degree() > Dp.degree():
            return None
        if all(c <= 0 for c in dc):
            dc = [-c for c in dc]
        if not (all(c >= 0 for c in dc) and dc[0] > 0 and dc[-1] > 0):
            return None
        total = sum((abs(c) for c in nc), arb(0))
        lo = dc[0] if dc[0].lower() <= dc[-1].lower() else dc[-1]
        return _up(total / arb(lo.lower()))

    def _growth(self, e: sp.Expr) -> Poly:
        c = self._const(e)
        if c is not None:
            if not c.is_finite():
                raise Unbounded(f"constant {e} is not finite")
            return [_up(c)]
        if e in self.symbols:
            return [arb(0), arb(1)]
        if isinstance(e, sp.Add):
            out: Poly = [arb(0)]
            for t in e.args:
                out = _padd(out, self.growth(t))
            return out
        if isinstance(e, sp.Mul):
            return self._mul(list(e.args))
        if isinstance(e, sp.Pow):
            ex = e.exp
            if ex.is_Integer and int(ex) >= 0:
                return _ppow(self.growth(e.base), int(ex))
            if ex.is_Integer:
                lb = self.lower(e.base)
                if lb is not None and lb > 0:
                    return [_up(1 / lb) ** (-int(ex))]
                raise Unbounded(f"cannot bound {e}: its base is not bounded away from 0 (a pole?)")
            if ex.is_Rational and ex > 0:
                k = math.ceil(float(ex))
                return _padd([arb(1)], _ppow(self.growth(e.base), k))
            raise Unbounded(f"cannot bound the power {e}")
        name = self.names.get(type(e))
        if name is None or len(e.args) != 1:
            raise Unbounded(f"cannot bound {e}")
        a = e.args[0]
        if name in ("tanh", "sin", "cos", "erf"):
            return [arb(1)]
        if name == "atan":
            return [_up(arb.pi() / 2)]
        if name in ("asinh", "abs"):
            return self.growth(a)
        if name == "exp":
            ub = self.upper(a)
            if ub is not None:
                return [_up(ub.exp())]
            raise Unbounded(f"cannot bound {e}: exponential of an argument not bounded above")
        if name == "log":
            # log(1 + exp(b)) <= log 2 + |b|
            if isinstance(a, sp.Add) and len(a.args) == 2 and sp.S.One in a.args:
                other = a.args[0] if a.args[1] == 1 else a.args[1]
                if self.names.get(type(other)) == "exp":
                    return _padd([_up(arb(2).log())], self.growth(other.args[0]))
            lb = self.lower(a)
            if lb is not None and lb > 0:
                g = self.growth(a)
                if lb >= 1:
                    return g  # 0 <= log y <= y for y >= 1
                return _padd([_up(lb.log())], g)  # |log y| <= |log lb| + y
            raise Unbounded(f"cannot bound {e}: the argument of log is not bounded away from 0")
        raise Unbounded(f"cannot bound {e} (function {name} grows too fast or has poles)")

    def _mul(self, factors: list[sp.Expr]) -> Poly:
        """Product bound, recognising exp(k·b)^… / (1 + exp(b))^m with 0 <= Σk <= m as <= 1
        (e^{kb}/(1+e^b)^m <= 1), the shape of logistic log-density derivatives."""
        factors = list(factors)
        for i, f in enumerate(factors):
            if not (isinstance(f, sp.Pow) and f.exp.is_Integer and int(f.exp) < 0):
                continue
            base, m = f.base, -int(f.exp)
            if not (isinstance(base, sp.Add) and len(base.args) == 2 and sp.S.One in base.args):
                continue
            other = base.args[0] if base.args[1] == 1 else base.args[1]
            if self.names.get(type(other)) != "exp":
                continue
            b = other.args[0]
            total = sp.Integer(0)
            used = []
            for j, g in enumerate(factors):
                if j == i:
                    continue
                k, arg = 1, None
                if self.names.get(type(g)) == "exp":
                    arg = g.args[0]
                elif isinstance(g, sp.Pow) and g.exp.is_Integer and int(g.exp) > 0 and self.names.get(type(g.base)) == "exp":
                    k, arg = int(g.exp), g.base.args[0]
                if arg is None:
                    continue
                ratio = sp.simplify(arg / b)
                if ratio.is_Rational and ratio >= 0:
                    total += k * ratio
                    used.append(j)
            if used and 0 <= total <= m:
                rest = [g for j, g in enumerate(factors) if j != i and j not in used]
                return self._mul(rest) if rest else [arb(1)]
        out: Poly = [arb(1)]
        for f in factors:
            out = _pmul(out, self.growth(f))
        return out


def growth_bound(expr: sp.Expr, symbols: Sequence[sp.Symbol], params: Mapping[sp.Symbol, arb] | None = None,
                 names: Mapping[type, str] | None = None) -> list[arb]:
    """Non-negative coefficients P_j with |expr(z)| <= Σ_j P_j ‖z‖∞^j for every real z.

    Rules (each a textbook inequality): constants by their absolute value; sums and products
    termwise; integer powers; negative powers of a base bounded below by c > 0 as c^-m; the
    bounded functions tanh, sin, cos, erf (1) and atan (π/2); |asinh y| <= |y|; exp of an
    argument bounded above; log(1 + e^b) <= log 2 + |b|; 0 <= log y <= y for y >= 1 (and
    |log y| <= |log c| + y for y >= c > 0); e^{kb}/(1 + e^b)^m <= 1 for 0 <= k <= m.
    Raises :class:`Unbounded` with the reason otherwise (e.g. a pole: 1/(z − 3))."""
    b = _Bounds(symbols, params or {}, _arb_names() if names is None else names)
    expr = sp.sympify(expr)
    try:
        return b.growth(expr)
    except Unbounded:
        # sympy sometimes factors a bounded sum into unbounded pieces, e.g. a logistic
        # log-density derivative as D⁻¹(−e^b + e^{2b} D⁻¹), D = 1 + e^b: distribute products
        # over sums (keeping exp(a + b) whole) and try once more
        expanded = sp.expand(expr, power_exp=False, power_base=False, log=False)
        if expanded == expr:
            raise
        return b.growth(expanded)


# ----------------------------------------------------------------------------------------
# A spec's certificate problem
# ----------------------------------------------------------------------------------------


def _prior_params(p) -> tuple[tuple[int, int], ...]:
    out = []
    for v in p.params:
        r = sp.Rational(v)
        if not r.is_Rational:
            raise NotCertified(f"prior parameter {v} is not a rational number")
        out.append((int(r.p), int(r.q)))
    return tuple(out)


def cert_problem(sym: SymbolicModel, point: Sequence[sp.Expr], gamma2: float, prec: int,
                 names: Mapping[type, str] | None = None) -> CertProblem:
    """The spec's decoder, prior and x = f(z0) (z0 exact) as ball-arithmetic callables at
    working precision ``prec`` (call inside ``working_precision(prec)``)."""
    if sym.d > 2:
        raise NotCertified(f"certificates are implemented for d <= 2 latents (this model has d = {sym.d})")
    decoder = compile_arb(list(sym.decoder), sym.latents, names=names)

    priors = []
    for p in sym.priors:
        if p.kind == "custom":
            raise NotCertified("a custom prior log-density has no proven tail bound or normalizer")
        priors.append(CertPrior1D(p.kind, _prior_params(p), _unary(to_arb(p.logpdf, [PRIOR_VARIABLE], names=names))))
    z0 = [sympy_number_to_arb(sp.Rational(v)) for v in point]
    x = decoder(z0)
    if not all(xi.is_finite() for xi in x):
        raise NotCertified("f(z0) is not finite")
    g2 = exact_float(float(gamma2))
    phi, X, G = phi_symbolic(sym)
    phi_fn = compile_arb([phi], sym.latents, {**dict(zip(X, x)), G: g2}, names)
    return CertProblem(sym.d, sym.n, decoder, priors, x, g2, prec, lambda z: phi_fn(z)[0])


def phi_gradient(sym: SymbolicModel, prob: CertProblem, names: Mapping[type, str] | None = None):
    """∇_zφ as one compiled ball function (for the mean-value bounds of the log p quadtree)."""
    phi, X, G = phi_symbolic(sym)
    params = {**dict(zip(X, prob.x)), G: prob.gamma2}
    return compile_arb([sp.diff(phi, z) for z in sym.latents], sym.latents, params, names)


def _unary(fn):
    return lambda t: fn([t])


def phi_symbolic(sym: SymbolicModel) -> tuple[sp.Expr, list[sp.Symbol], sp.Symbol]:
    """φ(z) = −G/2 Σ_i (X_i − f_i(z))² + ℓ(z) with symbols X_i (for x) and G (for γ²), so
    that sympy never distributes γ² over the residuals (no cancellation of large terms)."""
    X = [sp.Symbol(f"X{i + 1}", real=True) for i in range(sym.n)]
    G = sp.Symbol("G", positive=True)
    phi = -G / 2 * sp.Add(*[(X[i] - sym.decoder[i]) ** 2 for i in range(sym.n)]) + sym.log_prior()
    return phi, X, G


def elbo_exprs(sym: SymbolicModel, prob: CertProblem, derivatives: bool = True,
               names: Mapping[type, str] | None = None) -> tuple[PhiDerivatives, str]:
    """φ and its first and second derivatives (∂_jφ, ∂_j∂_kφ) as one compiled ball function
    (shared subexpressions) with a growth bound per output.  Returns (derivatives, reason):
    when a growth bound or a translation fails for a derivative, only φ is returned (order 0)
    and ``reason`` says why (the ELBO value alone may still be certified); when it fails for
    φ itself, NotCertified is raised."""
    phi, X, G = phi_symbolic(sym)
    params = {**{Xi: xi for Xi, xi in zip(X, prob.x)}, G: prob.gamma2}
    zs = list(sym.latents)

    def build(exprs: list[sp.Expr], order: int) -> PhiDerivatives:
        growth = [growth_bound(e, zs, params, names) for e in exprs]
        fn = compile_arb(exprs, zs, params, names)
        return PhiDerivatives(sym.d, fn, growth, order)

    try:
        phi_only = build([phi], 0)
    except Unbounded as exc:
        raise NotCertified(f"no tail bound for E_q[φ]: {exc}") from None
    if not derivatives:
        return phi_only, "derivatives not requested"
    d = sym.d
    try:
        grad = [sp.diff(phi, z) for z in zs]
        hess = [sp.diff(grad[i], zs[k]) for i in range(d) for k in range(i, d)]
        return build([phi, *grad, *hess], 2), ""
    except Unbounded as exc:
        return phi_only, f"no tail bound for a derivative of φ: {exc}"
    except SpecError as exc:
        return phi_only, f"a derivative of φ has no ball-arithmetic translation: {exc}"


def jacobian_balls(sym: SymbolicModel, point: Sequence[sp.Expr], names: Mapping[type, str] | None = None) -> list[list[arb]]:
    """J(z0) = ∂f/∂z (symbolic derivative of the spec's decoder) evaluated in ball arithmetic
    at the exact z0."""
    J = sym.jacobian()
    z0 = [sympy_number_to_arb(sp.Rational(v)) for v in point]
    return [[to_arb(J[i, k], sym.latents, names=names)(z0) for k in range(sym.d)] for i in range(sym.n)]


# ----------------------------------------------------------------------------------------
# Decimal output, rounded outward
# ----------------------------------------------------------------------------------------


def interval_strings(a: arb, digits: int = 20) -> dict[str, str]:
    """{"lo", "hi"}: decimal strings with ``digits`` significant digits, lo rounded down and
    hi rounded up, so that [lo, hi] contains the ball ``a`` (never a float that rounds)."""
    if not a.is_finite():
        raise NotCertified("enclosure is not finite")
    mid, rad, e10 = a.mid_rad_10exp(digits + 10)
    # exact decimals (string construction; Decimal.scaleb would round to the context precision)
    lo = Decimal(f"{int(mid - rad)}E{int(e10)}")
    hi = Decimal(f"{int(mid + rad)}E{int(e10)}")
    with localcontext() as c:
        c.prec = digits
        c.rounding = ROUND_FLOOR
        lo_r = +lo
        c.rounding = ROUND_CEILING
        hi_r = +hi
    return {"lo": _dec_str(lo_r), "hi": _dec_str(hi_r)}


def _dec_str(v: Decimal) -> str:
    s = format(v, "E") if (v != 0 and (abs(v.adjusted()) > 6)) else format(v, "f")
    return s


def one_sided_strings(lo: arb | None = None, hi: arb | None = None, digits: int = 20) -> dict[str, str]:
    """An interval with one infinite end ("-inf"/"inf")."""
    out = {"lo": "-inf", "hi": "inf"}
    if lo is not None:
        out["lo"] = interval_strings(lo, digits)["lo"]
    if hi is not None:
        out["hi"] = interval_strings(hi, digits)["hi"]
    return out


# ----------------------------------------------------------------------------------------
# certify_spec
# ----------------------------------------------------------------------------------------


@dataclass
class CertifiedRow:
    """One (z0, γ²) row: proven intervals (decimal strings rounded outward) and a status per
    quantity.  ``balls`` keeps the arb balls (reduced log p and ELBO* too) for callers in
    Python.  The full-covariance quantities are present only when they were asked for."""

    latent: list[float]
    gamma2: float
    intervals: dict[str, dict[str, str] | None]
    status: dict[str, str]
    seconds: float
    reduced: dict[str, dict[str, str] | None] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    balls: dict[str, Any] = field(default_factory=dict, repr=False)
    cpu_seconds: float = 0.0

    @property
    def quantities(self) -> tuple[str, ...]:
        return QUANTITIES + (FULLCOV_QUANTITIES if "elbo_star_fullcov" in self.status else ())

    def to_dict(self) -> dict[str, Any]:
        return {
            "latent": self.latent,
            "gamma2": self.gamma2,
            **{q: self.intervals.get(q) for q in self.quantities},
            "status": self.status,
            "reduced": self.reduced,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "details": self.details,
        }


def default_precision(gamma2: float, x_max: float) -> int:
    """Working precision (bits): 64 plus the bits lost when x − f(z) = O(γ⁻¹) is formed from
    O(|x|) numbers and multiplied by γ² (≈ log2 γ² + log2(1 + |x|)), plus a margin."""
    return 72 + math.ceil(math.log2(1.0 + gamma2)) + math.ceil(math.log2(1.0 + x_max))


def _fast_hints(sym: SymbolicModel, point, gamma2: float, full_cov: bool = False) -> dict[str, Any]:
    """Posterior modes, Laplace scales and the optimal encoders from the fast float64 path
    (hints only: the certificates never assume them right): keys ``modes``, ``scales``,
    ``mu``, ``s`` (mean-field) and, with ``full_cov``, ``mu_full``, ``L_full``."""
    from numerics.elbo import elbo_star
    from numerics.posterior import find_modes

    from .bridge import numeric_model, point_tensor

    model = numeric_model(sym)
    z0 = point_tensor(point)
    x = model.decoder(z0.unsqueeze(0))
    pm = find_modes(model, x, [gamma2], z0.unsqueeze(0))[0]
    st = elbo_star(model, [pm])[0]
    out = {"modes": pm.modes.tolist(), "scales": [pm.scale(j).tolist() for j in range(pm.count)],
           "mu": st.argmax["mu"].tolist(), "s": st.argmax["s"].tolist()}
    if full_cov:
        try:
            out["mu_full"], out["L_full"] = _fast_fullcov_optimum(model, pm)
        except Exception as exc:  # noqa: BLE001  (only the full-covariance rows lose their start)
            out["full_error"] = f"{type(exc).__name__}: {exc}"
    return out


def _fast_fullcov_optimum(model, pm) -> tuple[list[float], list[list[float]]]:
    """The fast path's full-covariance optimum (μ, L), Σ = L Lᵀ, from
    numerics.elbo.elbo_star_fullcov's ``argmax``.  A hint only: the proof does not rely on it."""
    from numerics.elbo import elbo_star_fullcov

    est = elbo_star_fullcov(model, [pm])[0]
    return est.argmax["mu"].tolist(), est.argmax["L"].tolist()


def certify_point(sym: SymbolicModel, point: Sequence[sp.Expr], gamma2: float, prec: int | None = None,
                  two_sided: bool = True, names: Mapping[type, str] | None = None, target: float = 1e-15,
                  hints: dict[str, Any] | None = None, full_cov: bool = False) -> CertifiedRow:
    """Certify log p, ELBO* (mean-field; with ``full_cov`` also the full-covariance ELBO*),
    the gap(s) and c_IMA at x = f(z0) for one γ² (module doc)."""
    t0, c0 = time.perf_counter(), time.process_time()
    status: dict[str, str] = {}
    balls: dict[str, Any] = {}
    details: dict[str, Any] = {}
    latent = [float(v) for v in point]
    n, d = sym.n, sym.d
    gamma_qs = ("log_px", "elbo_star", "gap") + (("elbo_star_fullcov", "gap_fullcov") if full_cov else ())

    def finish() -> CertifiedRow:
        return _finish(latent, gamma2, status, balls, details, t0, c0, n, d)

    # c_IMA (independent of γ²)
    try:
        with working_precision(max(prec or 0, 128)):
            J = jacobian_balls(sym, point, names)
            c = c_ima_ball(J) if d <= 2 else _c_ima_general(J)
        balls["c_ima"] = c
        status["c_ima"] = STATUS_OK
    except (NotCertified, SpecError) as exc:
        status["c_ima"] = f"not certified: {exc}"
    if d > 2:
        for q in gamma_qs:
            status[q] = f"not certified: certificates are implemented for d <= 2 latents (d = {d})"
        return finish()
    try:
        with working_precision(64):
            x_max = max(abs(float(v)) for v in cert_problem(sym, point, gamma2, 64, names).x)
    except (NotCertified, SpecError) as exc:
        for q in gamma_qs:
            status[q] = f"not certified: {exc}"
        return finish()
    try:
        if hints is None:
            hints = _fast_hints(sym, point, gamma2, full_cov)
        modes, scales = hints["modes"], hints["scales"]
    except Exception as exc:  # noqa: BLE001  (any failure of the fast path leaves nothing to start from)
        for q in gamma_qs:
            status[q] = f"not certified: the fast path found no starting point ({type(exc).__name__}: {exc})"
        return finish()
    p0 = prec or default_precision(gamma2, x_max)
    # log p
    lp = None
    last_exc: Exception | None = None
    for p in ([p0] if prec else [p0, p0 + 48]):
        try:
            with working_precision(p):
                prob = cert_problem(sym, point, gamma2, p, names)
                try:
                    grad = phi_gradient(sym, prob, names)
                except SpecError:  # e.g. the derivative of abs(): use the prior-mass bounds only
                    grad = None
                cert = certify_log_px(prob, modes[0], scales[0], grad_fn=grad)
            lp = cert
            if rel_radius(cert.value) <= target / 4:
                break
        except (NotCertified, SpecError) as exc:
            last_exc = exc
    if lp is not None:
        balls["log_px_red"] = lp.value
        status["log_px"] = STATUS_OK
        details["log_px"] = {"precision_bits": lp.prec, "integrated_cells": lp.integrated_cells,
                             "bounded_cells": lp.bounded_cells, "outside_mass_bound": float(lp.outside_bound.upper()),
                             "far_T": lp.far_T, "seconds": round(lp.seconds, 3), **lp.details}
    else:
        status["log_px"] = f"not certified: {last_exc}"
    # ELBO* (mean-field, then full covariance)
    families = ("meanfield", "fullcov") if full_cov else ("meanfield",)
    for fam in families:
        _elbo_star_row(sym, point, gamma2, p0, names, two_sided, fam, hints, status, balls, details)
    # gaps (at high precision: the default 53 bits would round the difference)
    with working_precision(256):
        _gap(balls, status, "")
        if full_cov:
            _gap(balls, status, "_fullcov")
    return finish()


def _elbo_star_row(sym, point, gamma2, p0, names, two_sided, family, hints, status, balls, details) -> None:
    """The ELBO* certificate of one encoder family into the row's dicts (keys ``elbo_star``
    or ``elbo_star_fullcov``)."""
    sfx = "" if family == "meanfield" else "_fullcov"
    q = "elbo_star" + sfx
    try:
        with working_precision(p0):
            prob = cert_problem(sym, point, gamma2, p0, names)
            pd, why = elbo_exprs(sym, prob, derivatives=two_sided, names=names)
            if family == "meanfield":
                mu_h, s_h = hints["mu"], hints["s"]
                L_h = [[math.sqrt(s_h[i]) if i == j else 0.0 for j in range(sym.d)] for i in range(sym.d)]
            else:
                if "mu_full" not in hints:
                    why_not = hints.get("full_error", "none given")
                    raise NotCertified(f"the fast path found no full-covariance starting point ({why_not})")
                mu_h, L_h = hints["mu_full"], hints["L_full"]
            if pd.order < 2:
                lb = certify_elbo_at(pd, prob.gamma2, [exact_float(v) for v in mu_h],
                                     [[exact_float(v) for v in row] for row in L_h])
                balls[f"elbo_lower{sfx}_red"] = lb
                status[q] = f"{STATUS_LOWER} (upper bound not certified: {why})"
                details[q] = {"precision_bits": p0}
                return
            if family == "meanfield":
                ec = certify_elbo_star(pd, prob.gamma2, mu_h, s_h)
            else:
                ec = certify_elbo_star_fullcov(pd, prob.gamma2, mu_h, L_h)
        balls[f"elbo_lower{sfx}_red"] = ec.lower_bound
        details[q] = {"precision_bits": p0, "seconds": round(ec.seconds, 3), **ec.details}
        if ec.two_sided and ec.value is not None:
            balls[f"elbo_star{sfx}_red"] = ec.value
            status[q] = STATUS_OK
            details[q]["box_radius"] = ec.box_radius
            details[q]["mu_star"] = [interval_strings(m, 17) for m in ec.mu]
            if family == "meanfield":
                details[q]["s_star"] = [interval_strings(v, 17) for v in ec.s]
            else:
                details[q]["cov_star"] = [[interval_strings(v, 17) for v in row] for row in ec.cov]
        else:
            status[q] = f"{STATUS_LOWER} (upper bound not certified: {ec.reason})"
    except (NotCertified, SpecError) as exc:
        status[q] = f"not certified: {exc}"


def _gap(balls: dict[str, Any], status: dict[str, str], sfx: str = "") -> None:
    gq = "gap" + sfx
    if "log_px_red" in balls and f"elbo_star{sfx}_red" in balls:
        balls[gq] = balls["log_px_red"] - balls[f"elbo_star{sfx}_red"]
        status[gq] = STATUS_OK
    elif "log_px_red" in balls and f"elbo_lower{sfx}_red" in balls:
        balls[gq + "_upper"] = arb(balls["log_px_red"].upper()) - arb(balls[f"elbo_lower{sfx}_red"].lower())
        status[gq] = f"{STATUS_UPPER} (ELBO* has a lower bound only)"
    else:
        status[gq] = "not certified: needs log p and ELBO* enclosures"


def _c_ima_general(J: list[list[arb]]) -> arb:
    from numerics.certified import _det

    n, d = len(J), len(J[0])
    Gm = [[sum((J[i][a] * J[i][b] for i in range(n)), arb(0)) for b in range(d)] for a in range(d)]
    return sum((Gm[k][k].log() for k in range(d)), arb(0)) / 2 - _det(Gm).log() / 2


def _finish(latent, gamma2, status, balls, details, t0, c0, n, d) -> CertifiedRow:
    with working_precision(256):
        div = (n - d) * (exact_float(gamma2) / (2 * arb.pi())).log() / 2
        intervals: dict[str, dict[str, str] | None] = {q: None for q in QUANTITIES + FULLCOV_QUANTITIES if q in status}
        reduced: dict[str, dict[str, str] | None] = {"divergent_term": interval_strings(div)}
        balls["divergent_term"] = div
        if "log_px_red" in balls:
            intervals["log_px"] = interval_strings(balls["log_px_red"] + div)
            reduced["log_px"] = interval_strings(balls["log_px_red"])
            balls["log_px"] = balls["log_px_red"] + div
        for sfx in ("", "_fullcov"):
            q = "elbo_star" + sfx
            if f"elbo_star{sfx}_red" in balls:
                intervals[q] = interval_strings(balls[f"elbo_star{sfx}_red"] + div)
                reduced[q] = interval_strings(balls[f"elbo_star{sfx}_red"])
                balls[q] = balls[f"elbo_star{sfx}_red"] + div
            elif f"elbo_lower{sfx}_red" in balls:
                balls["elbo_lower" + sfx] = balls[f"elbo_lower{sfx}_red"] + div
                intervals[q] = one_sided_strings(lo=balls["elbo_lower" + sfx])
                reduced[q] = one_sided_strings(lo=balls[f"elbo_lower{sfx}_red"])
            g = "gap" + sfx
            if g in balls:
                intervals[g] = interval_strings(balls[g])
            elif g + "_upper" in balls:
                intervals[g] = one_sided_strings(hi=balls[g + "_upper"])
        if "c_ima" in balls:
            intervals["c_ima"] = interval_strings(balls["c_ima"])
    return CertifiedRow(latent, float(gamma2), intervals, status, time.perf_counter() - t0, reduced, details, balls,
                        round(time.process_time() - c0, 3))


def certify_spec(sym: SymbolicModel, prec: int | None = None, progress: bool = True, two_sided: bool = True,
                 names: Mapping[type, str] | None = None, full_cov: bool = True) -> list[CertifiedRow]:
    """Certified rows for every latent point and γ² of a spec (points outer, like
    `evaluate`).  ``prec``: working precision in bits (default: chosen per γ², raised once
    when the log p ball is wider than its target).  ``full_cov`` (default, as in the CLI):
    also certify the full-covariance ELBO* and its gap."""
    if not sym.gamma2:
        raise SpecError("spec has no 'gamma2' (a list of decoder precisions γ² > 0)")
    if not sym.points:
        raise SpecError("spec has no 'latents' (a list of points z0 at which x = f(z0) is evaluated)")
    if prec is not None and not 32 <= prec <= 4096:
        raise SpecError(f"precision must be between 32 and 4096 bits, got {prec}")
    items = [(p, g) for p in sym.points for g in sym.gamma2]
    rows = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=f"certify {sym.name}", unit="row", file=sys.stderr)
    for p, g in items:
        if bar:
            bar.set_postfix_str(f"gamma2={g:g}")
        rows.append(certify_point(sym, p, g, prec=prec, two_sided=two_sided, names=names, full_cov=full_cov))
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return rows


# ----------------------------------------------------------------------------------------
# CLI pieces (the parser is in proofs_check.cli_parsers)
# ----------------------------------------------------------------------------------------


def format_rows(sym: SymbolicModel, rows: Sequence[CertifiedRow]) -> str:
    head = (f"model {sym.name!r}: d = {sym.d}, n = {sym.n}, prior {sym.prior_label}; {len(rows)} rows "
            f"in {sum(r.seconds for r in rows):.1f} s, {sum(r.cpu_seconds for r in rows):.1f} s CPU (intervals rounded outward)")
    lines = [head, ""]
    for r in rows:
        z = "(" + ", ".join(f"{v:.4g}" for v in r.latent) + ")"
        lines.append(f"z0 = {z}, gamma^2 = {r.gamma2:g}  ({r.seconds:.1f} s, {r.cpu_seconds:.1f} s CPU)")
        for q in r.quantities:
            iv = r.intervals.get(q)
            shown = f"[{iv['lo']}, {iv['hi']}]" if iv else "-"
            lines.append(f"  {q:<17} {shown:<62} {r.status.get(q, '')}")
    return "\n".join(lines)


def cmd_certify(args: argparse.Namespace) -> int:
    from theory.spec import load_spec

    from .cli import EXIT_OK, UserError, dumps_json, write_atomic

    sym = load_spec(args.spec)
    if args.prec is not None and not 32 <= args.prec <= 4096:
        raise UserError(f"--prec must be between 32 and 4096 bits, got {args.prec}")
    if sym.d > 2:
        raise UserError(f"certify supports d <= 2 latents; {args.spec} has d = {sym.d}")
    rows = certify_spec(sym, prec=args.prec, progress=not getattr(args, "no_progress", False),
                        full_cov=getattr(args, "full_cov", True))
    payload = {
        "model": {"name": sym.name, "d": sym.d, "n": sym.n, "decoder": [str(c) for c in sym.decoder], "prior": sym.prior_label},
        "certified": True,
        "rows": [r.to_dict() for r in rows],
    }
    text = dumps_json(payload)
    if args.json:
        if str(args.json) == "-":
            sys.stdout.write(text)
            return EXIT_OK
        write_atomic(Path(args.json), text)
    print(format_rows(sym, rows))
    if args.json:
        print(f"\nJSON written to {args.json}")
    return EXIT_OK
