"""The sympy -> torch bridge: turns a :class:`theory.spec.SymbolicModel` into a numeric
:class:`numerics.models.Model` (and into mpmath callables for the extended-precision path).

The translator walks the sympy tree and builds closures of torch operations, so the result
works under ``torch.func`` (jacrev, hessian, vmap), on any device, in float64.  Only the node
types the spec parser can produce (plus what sympy makes of them) are accepted.
"""

from __future__ import annotations

from typing import Callable, Sequence

import mpmath
import sympy as sp
import torch

from numerics.models import (
    CallableDecoder,
    ExpressionPrior1D,
    GaussianPrior1D,
    LaplacePrior1D,
    LogisticPrior1D,
    Model,
    ModelError,
    Prior,
    Prior1D,
    StudentTPrior1D,
)
from theory.functions import backend_functions, by_node, lambdify
from theory.spec import KINK_NODES, PRIOR_VARIABLE, SpecError, SymbolicModel, SymbolicPrior1D

Tensor = torch.Tensor
Fn = Callable[[Sequence[Tensor]], Tensor]

#: sympy node class -> torch function, derived from the one function table (theory.functions).
_UNARY: dict[type, Callable[[Tensor], Tensor]] = backend_functions("torch", torch)
#: torch's square root, for the power node Pow(a, 1/2) that sympy makes of sqrt(a).
_SQRT: Callable[[Tensor], Tensor] = getattr(torch, by_node()["sqrt"].torch)


def to_torch(expr: sp.Expr, symbols: Sequence[sp.Symbol]) -> Fn:
    """Compile ``expr`` into ``fn(args)`` where ``args[k]`` is the tensor for ``symbols[k]``."""
    index = {s: k for k, s in enumerate(symbols)}

    def build(e: sp.Basic) -> Fn:
        if e in index:
            k = index[e]
            return lambda a: a[k]
        if e.is_Number or e.is_NumberSymbol or (e.is_number and not e.free_symbols):
            val = complex(sp.N(e, 30))
            if abs(val.imag) > 0:
                raise SpecError(f"expression has a non-real constant {e}")
            c = float(val.real)
            return lambda a: torch.zeros_like(a[0]) + c
        if isinstance(e, sp.Add):
            parts = [build(t) for t in e.args]
            return lambda a: _sum(p(a) for p in parts)
        if isinstance(e, sp.Mul):
            parts = [build(t) for t in e.args]
            return lambda a: _prod(p(a) for p in parts)
        if isinstance(e, sp.Pow):
            base = build(e.base)
            ex = e.exp
            if ex.is_Integer:
                n = int(ex)
                if n == 2:
                    return lambda a: (lambda b: b * b)(base(a))
                return lambda a: base(a) ** n
            if ex == sp.Rational(1, 2):
                return lambda a: _SQRT(base(a))
            if ex.is_number:
                c = float(ex)
                return lambda a: base(a) ** c
            expo = build(ex)
            return lambda a: torch.pow(base(a), expo(a))
        fn = _UNARY.get(type(e)) or _UNARY.get(e.func)  # type: ignore[arg-type]
        if fn is not None and len(e.args) == 1:
            inner = build(e.args[0])
            return lambda a: fn(inner(a))
        raise SpecError(f"cannot translate {type(e).__name__} ({e}) to torch")

    return build(sp.sympify(expr))


def _sum(it):
    it = iter(it)
    acc = next(it)
    for v in it:
        acc = acc + v
    return acc


def _prod(it):
    it = iter(it)
    acc = next(it)
    for v in it:
        acc = acc * v
    return acc


def decoder_from_symbolic(model: SymbolicModel) -> CallableDecoder:
    """f as a batched torch callable (..., d) -> (..., n)."""
    comps = [to_torch(c, model.latents) for c in model.decoder]

    def f(z: Tensor) -> Tensor:
        args = [z[..., k] for k in range(model.d)]
        return torch.stack([c(args) for c in comps], -1)

    return CallableDecoder(f, model.d, model.n, name=model.name)


def prior_factor(p: SymbolicPrior1D) -> Prior1D:
    """One prior factor as a numeric prior (closed forms for the named priors)."""
    if p.kind == "gaussian":
        return GaussianPrior1D(float(p.params[0]), float(p.params[1]))
    if p.kind == "logistic":
        return LogisticPrior1D(float(p.params[0]), float(p.params[1]))
    if p.kind == "student_t":
        return StudentTPrior1D(float(p.params[0]))
    if p.kind == "laplace":
        return LaplacePrior1D(float(p.params[0]), float(p.params[1]))
    if p.kind == "custom":
        kinks = [a.args[0] for a in p.logpdf.atoms(*KINK_NODES)]
        if kinks:
            arg = kinks[0]
            at = ""
            if arg.is_polynomial(PRIOR_VARIABLE) and sp.degree(arg, PRIOR_VARIABLE) == 1:
                root = sp.solve(arg, PRIOR_VARIABLE)
                at = f" at z = {sp.sstr(root[0].subs(PRIOR_VARIABLE, sp.Symbol('z')))}" if root else ""
            raise SpecError(
                f"prior: {p.label} has a kink{at} (abs/sign of "
                f"{sp.sstr(arg.subs(PRIOR_VARIABLE, sp.Symbol('z')))[:60]}): the estimators (Newton, Laplace-centred "
                "quadrature) need a smooth log-density; for the Laplace prior use the built-in 'laplace' or "
                "'laplace(loc, scale)', which handles its kink"
            )
        fn = to_torch(p.logpdf, [PRIOR_VARIABLE])
        try:  # named by the user's own text (p.label), not by sympy's rewriting of it
            return ExpressionPrior1D(lambda t: fn([t]), name=p.label)
        except ValueError as exc:
            raise SpecError(f"prior: {exc}") from None
    raise SpecError(f"unknown prior kind {p.kind!r}")


def numeric_model(model: SymbolicModel) -> Model:
    """The numeric twin of a symbolic model (decoder and prior).

    Errors start with the spec's file when the model was loaded from one
    (``model.meta["source"]``), which the numeric model keeps in its own ``meta`` for the
    messages of :mod:`numerics.sweep`."""
    source = model.meta.get("source", "")
    cache: dict[int, Prior1D] = {}
    factors = []
    try:
        for p in model.priors:
            key = id(p)
            if key not in cache:
                cache[key] = prior_factor(p)
            factors.append(cache[key])
        num = Model(decoder_from_symbolic(model), Prior(factors), name=model.name)
    except (SpecError, ModelError) as exc:
        if source and not str(exc).startswith(f"{source}: "):
            raise type(exc)(f"{source}: {exc}") from None
        raise
    if source:
        num.meta["source"] = source
    return num


def mpmath_functions(model: SymbolicModel, log_normalizers: Sequence[float] | None = None):
    """(f_mp, ell_mp): the decoder and the prior log-density as mpmath callables of a
    latent vector, for the extended-precision reference path (numerics.mpref).

    Lambdified with the mpmath functions of the one function table (theory.functions); they
    evaluate at the caller's mpmath precision (numerics.mpref sets it with ``mpmath.workdps``)."""
    f_l = lambdify(model.latents, list(model.decoder), "mpmath")
    ell = model.log_prior()
    if log_normalizers is not None:
        ell = ell - sum(sp.Float(c, 30) for c in log_normalizers)
    ell_l = lambdify(model.latents, ell, "mpmath")

    def f_mp(z):
        return [mpmath.mpf(v) if not isinstance(v, mpmath.mpf) else v for v in f_l(*z)]

    def ell_mp(z):
        return ell_l(*z)

    return f_mp, ell_mp


def point_tensor(point: Sequence[sp.Expr], device: torch.device | str = "cpu") -> Tensor:
    return torch.tensor([float(v) for v in point], dtype=torch.float64, device=device)


def log_normalizers(model: Model) -> list[float]:
    """Per-factor log normalizers (0 for the closed-form priors)."""
    return [getattr(f, "log_normalizer", 0.0) if isinstance(f, ExpressionPrior1D) else 0.0 for f in model.prior.factors]

