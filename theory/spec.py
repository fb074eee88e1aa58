"""Safe parsing of TOML model specs into symbolic models (docs/theory.md, "Model and notation").

A spec is *data, never code*.  ``sympify`` evaluates strings with ``eval``, so no user string
ever reaches it: every expression is parsed with :mod:`ast`, checked node by node against a
whitelist (numbers, the latent symbols, arithmetic, a fixed set of elementary functions), and
the sympy expression is built from the checked tree by this module.  Decimal literals become
exact rationals (``0.4`` -> ``2/5``) so that derivations in :mod:`theory.expansions` are exact
symbolic algebra with numbers substituted only at the end.

Spec format (see docs/spec.md)::

    name = "my model"                      # optional
    decoder = ["z1 + 0.4*z2**2", "z2"]     # n expressions in z1..zd
    prior = "logistic"                     # "gaussian", "gaussian(0, 2)", "logistic(0, 1)",
                                           # "student_t(5)", {logpdf = "-z**2/2"}, or a list
                                           # of those, one per latent coordinate
    gamma2 = [1.0, 10.0, 100.0, 1e4]       # decoder precisions gamma^2 > 0
    latents = [[0.3, 1.1], [-0.8, -0.5]]   # points z0; evaluated at x = f(z0)
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import sympy as sp

from .functions import SPEC_FUNCTIONS

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]


class SpecError(ValueError):
    """A model spec is malformed; the message names the offending field and the problem."""


#: Elementary functions a spec may call, by name: the parser's whitelist, derived from the one
#: function table :data:`theory.functions.FUNCTIONS` (which also names each function's torch,
#: mpmath, numpy and arb counterparts).
ALLOWED_FUNCTIONS: dict[str, Callable[..., sp.Expr]] = {name: f.build for name, f in SPEC_FUNCTIONS.items()}
_ARITY: dict[str, int] = {name: f.arity for name, f in SPEC_FUNCTIONS.items()}

#: Named constants a spec may use.
ALLOWED_CONSTANTS: dict[str, sp.Expr] = {"pi": sp.pi, "E": sp.E}

_BINOPS: dict[type, Callable[[sp.Expr, sp.Expr], sp.Expr]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}

_MAX_EXPR_CHARS = 20_000
#: Numeric exponents beyond this are refused: exact powers like 9**9**9 would never finish.
_MAX_EXPONENT = 1000


def exact_number(value: float | int | str) -> sp.Rational:
    """Turn a spec number into an exact rational: ``0.4`` -> ``2/5`` (via its shortest repr)."""
    if isinstance(value, bool):
        raise SpecError(f"expected a number, got the boolean {value!r}")
    if isinstance(value, int):
        return sp.Integer(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(f"expected a finite number, got {value!r}")
        return sp.Rational(repr(value))
    if isinstance(value, str):
        return exact_number(float(value))
    raise SpecError(f"expected a number, got {type(value).__name__} {value!r}")


def parse_expression(text: str, symbols: Mapping[str, sp.Symbol], where: str = "expression") -> sp.Expr:
    """Parse ``text`` into a sympy expression without ever evaluating it as code.

    Only these are accepted: int/float literals, names in ``symbols`` or
    :data:`ALLOWED_CONSTANTS`, ``+ - * / **``, unary ``+ -``, and calls of the names in
    :data:`ALLOWED_FUNCTIONS` with positional arguments.  Anything else (attribute access,
    subscripts, other calls, dunder names, ``^``, comparisons, lambdas, ...) raises
    :class:`SpecError` naming ``where`` and the refused construct.
    """
    if not isinstance(text, str):
        raise SpecError(f"{where}: expected a string expression, got {type(text).__name__} {text!r}")
    if len(text) > _MAX_EXPR_CHARS:
        raise SpecError(f"{where}: expression longer than {_MAX_EXPR_CHARS} characters")
    if "__" in text:
        raise SpecError(f"{where}: dunder names are not allowed in expressions: {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise SpecError(f"{where}: cannot parse {text!r}: {exc.msg}") from None

    allowed_names = ", ".join(sorted(symbols))

    def build(node: ast.AST) -> sp.Expr:
        if isinstance(node, ast.Expression):
            return build(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
                return exact_number(node.value)
            raise SpecError(f"{where}: only numeric literals are allowed, got {node.value!r} in {text!r}")
        if isinstance(node, ast.Name):
            if node.id in symbols:
                return symbols[node.id]
            if node.id in ALLOWED_CONSTANTS:
                return ALLOWED_CONSTANTS[node.id]
            if node.id in ALLOWED_FUNCTIONS:
                raise SpecError(f"{where}: function {node.id!r} must be called, in {text!r}")
            raise SpecError(
                f"{where}: unknown symbol {node.id!r} in {text!r}; allowed variables: {allowed_names}; "
                f"constants: {', '.join(ALLOWED_CONSTANTS)}"
            )
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                hint = " (use ** for powers)" if isinstance(node.op, ast.BitXor) else ""
                raise SpecError(f"{where}: operator {type(node.op).__name__} is not allowed{hint}, in {text!r}")
            left, right = build(node.left), build(node.right)
            if isinstance(node.op, ast.Pow) and right.is_number and abs(float(right)) > _MAX_EXPONENT:
                raise SpecError(f"{where}: exponent {right} is too large (|exponent| <= {_MAX_EXPONENT}), in {text!r}")
            return op(left, right)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return -build(node.operand)
            if isinstance(node.op, ast.UAdd):
                return build(node.operand)
            raise SpecError(f"{where}: unary operator {type(node.op).__name__} is not allowed, in {text!r}")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise SpecError(f"{where}: only calls of named elementary functions are allowed, in {text!r}")
            fn = ALLOWED_FUNCTIONS.get(node.func.id)
            if fn is None:
                raise SpecError(
                    f"{where}: function {node.func.id!r} is not allowed in {text!r}; "
                    f"allowed: {', '.join(sorted(ALLOWED_FUNCTIONS))}"
                )
            arity = _ARITY[node.func.id]
            if node.keywords or len(node.args) != arity:
                count = "one positional argument" if arity == 1 else f"{arity} positional arguments"
                raise SpecError(f"{where}: {node.func.id}() takes exactly {count}, in {text!r}")
            return fn(*[build(a) for a in node.args])
        if isinstance(node, ast.Attribute):
            raise SpecError(f"{where}: attribute access is not allowed, in {text!r}")
        raise SpecError(f"{where}: construct {type(node).__name__} is not allowed, in {text!r}")

    expr = build(tree)
    return sp.sympify(expr)  # already a sympy object; sympify of a Basic does not eval strings


# ----------------------------------------------------------------------------------------
# Priors
# ----------------------------------------------------------------------------------------

#: The variable in which one-dimensional prior log-densities are written.
PRIOR_VARIABLE = sp.Symbol("t", real=True)


@dataclass(frozen=True)
class SymbolicPrior1D:
    """One factor p_k of the factorized prior p0(z) = prod_k p_k(z_k) (docs/theory.md).

    ``logpdf`` is ℓ_k as a sympy expression in :data:`PRIOR_VARIABLE`.  ``normalized`` says
    whether ``exp(logpdf)`` integrates to one; a user-given log-density is not, and its
    normalizer is computed numerically by the bridge (only a constant shift of ℓ, which
    leaves the gap, c_IMA and the optimal encoder unchanged but enters log p and ELBO).
    """

    kind: str
    params: tuple[sp.Expr, ...]
    logpdf: sp.Expr
    normalized: bool

    @property
    def label(self) -> str:
        if self.kind == "custom":
            return f"custom({self.logpdf.subs(PRIOR_VARIABLE, sp.Symbol('z'))})"
        if not self.params:
            return self.kind
        return f"{self.kind}({', '.join(str(p) for p in self.params)})"


def gaussian_prior(mean: sp.Expr = sp.Integer(0), var: sp.Expr = sp.Integer(1)) -> SymbolicPrior1D:
    """ℓ(t) = -(t-m)²/(2v) - ½ log(2πv)."""
    if not (var > 0):
        raise SpecError(f"prior gaussian(mean, var): var must be > 0, got {var}")
    t = PRIOR_VARIABLE
    return SymbolicPrior1D("gaussian", (mean, var), -(t - mean) ** 2 / (2 * var) - sp.log(2 * sp.pi * var) / 2, True)


def logistic_prior(loc: sp.Expr = sp.Integer(0), scale: sp.Expr = sp.Integer(1)) -> SymbolicPrior1D:
    """ℓ(t) = -y - 2 log(1 + e^{-y}) - log s with y = (t - loc)/s."""
    if not (scale > 0):
        raise SpecError(f"prior logistic(loc, scale): scale must be > 0, got {scale}")
    t = PRIOR_VARIABLE
    y = (t - loc) / scale
    return SymbolicPrior1D("logistic", (loc, scale), -y - 2 * sp.log(1 + sp.exp(-y)) - sp.log(scale), True)


def student_t_prior(nu: sp.Expr) -> SymbolicPrior1D:
    """ℓ(t) = log Γ((ν+1)/2) - log Γ(ν/2) - ½ log(νπ) - (ν+1)/2 · log(1 + t²/ν)."""
    if not (nu > 0):
        raise SpecError(f"prior student_t(nu): nu must be > 0, got {nu}")
    t = PRIOR_VARIABLE
    const = sp.loggamma((nu + 1) / 2) - sp.loggamma(nu / 2) - sp.log(nu * sp.pi) / 2
    return SymbolicPrior1D("student_t", (nu,), const - (nu + 1) / 2 * sp.log(1 + t**2 / nu), True)


_PRIOR_BUILDERS: dict[str, tuple[Callable[..., SymbolicPrior1D], tuple[int, int]]] = {
    "gaussian": (gaussian_prior, (0, 2)),
    "normal": (gaussian_prior, (0, 2)),
    "logistic": (logistic_prior, (0, 2)),
    "student_t": (student_t_prior, (1, 1)),
}

_PRIOR_CALL = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$")


def parse_prior(value: Any, where: str = "prior") -> SymbolicPrior1D:
    """Parse one prior factor: a name with optional arguments, or ``{logpdf = "..."}``."""
    if isinstance(value, Mapping):
        unknown = set(value) - {"logpdf"}
        if unknown or "logpdf" not in value:
            raise SpecError(f"{where}: a custom prior is a table with exactly one key 'logpdf', got keys {sorted(value)}")
        expr = parse_expression(value["logpdf"], {"z": PRIOR_VARIABLE}, where=f"{where}.logpdf")
        return SymbolicPrior1D("custom", (), expr, False)
    if not isinstance(value, str):
        raise SpecError(f"{where}: expected a prior name like 'gaussian' or a table {{logpdf = ...}}, got {value!r}")
    m = _PRIOR_CALL.match(value)
    if not m or m.group(1) not in _PRIOR_BUILDERS:
        known = ", ".join(sorted(_PRIOR_BUILDERS))
        raise SpecError(f"{where}: unknown prior {value!r}; known priors: {known}, or {{logpdf = \"...\"}}")
    builder, (lo, hi) = _PRIOR_BUILDERS[m.group(1)]
    args: list[sp.Expr] = []
    if m.group(2) is not None and m.group(2).strip():
        for i, a in enumerate(m.group(2).split(",")):
            expr = parse_expression(a, {}, where=f"{where} argument {i + 1}")
            if not expr.is_number or not expr.is_real:
                raise SpecError(f"{where}: prior arguments must be real numbers, got {a.strip()!r}")
            args.append(expr)
    if not lo <= len(args) <= hi:
        raise SpecError(f"{where}: {m.group(1)} takes {lo} to {hi} arguments, got {len(args)} in {value!r}")
    return builder(*args)


# ----------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------


def latent_symbols(d: int) -> tuple[sp.Symbol, ...]:
    """The latent symbols z1..zd (real)."""
    return tuple(sp.Symbol(f"z{k + 1}", real=True) for k in range(d))


@dataclass(frozen=True)
class SymbolicModel:
    """Decoder mean f: R^d -> R^n and factorized prior p0, as sympy objects (docs/theory.md notation).

    ``decoder`` is an n x 1 matrix of expressions in ``latents``; ``priors`` holds one factor
    per latent coordinate; ``gamma2`` are decoder precisions γ² and ``points`` latent points z0
    (exact rationals) at which x = f(z0) is evaluated.
    """

    name: str
    latents: tuple[sp.Symbol, ...]
    decoder: sp.Matrix
    priors: tuple[SymbolicPrior1D, ...]
    gamma2: tuple[float, ...] = ()
    points: tuple[tuple[sp.Rational, ...], ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def d(self) -> int:
        return len(self.latents)

    @property
    def n(self) -> int:
        return self.decoder.shape[0]

    def jacobian(self) -> sp.Matrix:
        """J(z) = ∂f/∂z, n x d."""
        return self.decoder.jacobian(sp.Matrix(self.latents))

    def log_prior(self) -> sp.Expr:
        """ℓ(z) = Σ_k ℓ_k(z_k) (normalized factors only carry their constants)."""
        return sp.Add(*[p.logpdf.subs(PRIOR_VARIABLE, z) for p, z in zip(self.priors, self.latents)])

    @property
    def prior_label(self) -> str:
        labels = {p.label for p in self.priors}
        return labels.pop() if len(labels) == 1 else "[" + ", ".join(p.label for p in self.priors) + "]"


def _check_gamma2(values: Any) -> tuple[float, ...]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, list) or not values:
        raise SpecError("gamma2: expected a non-empty list of positive numbers")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpecError(f"gamma2: expected numbers, got {v!r}")
        v = float(v)
        if not math.isfinite(v) or v <= 0:
            raise SpecError(f"gamma2: every decoder precision γ² must be finite and > 0, got {v!r}")
        out.append(v)
    return tuple(out)


def model_from_dict(data: Mapping[str, Any], default_name: str = "model") -> SymbolicModel:
    """Build a :class:`SymbolicModel` from a parsed TOML table (see module docstring)."""
    known = {"name", "description", "decoder", "prior", "gamma2", "latents"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"unknown spec keys {unknown}; known keys: {sorted(known)}")
    if "decoder" not in data:
        raise SpecError("spec has no 'decoder' (a list of expressions in z1..zd)")
    dec = data["decoder"]
    if isinstance(dec, str):
        dec = [dec]
    if not isinstance(dec, list) or not dec or not all(isinstance(e, str) for e in dec):
        raise SpecError("decoder: expected a non-empty list of expression strings")
    # d is the largest index of a z-symbol used, unless latents fix it.
    used = sorted({int(m) for e in dec for m in re.findall(r"\bz(\d+)\b", e)})
    d = max(used) if used else 0
    latents_data = data.get("latents")
    if latents_data is not None:
        if not isinstance(latents_data, list) or not latents_data or not all(isinstance(p, list) for p in latents_data):
            raise SpecError("latents: expected a non-empty list of points, each a list of numbers")
        dims = {len(p) for p in latents_data}
        if len(dims) != 1:
            raise SpecError(f"latents: all points must have the same length, got lengths {sorted(dims)}")
        d_pts = dims.pop()
        if d_pts < d:
            raise SpecError(f"dimension mismatch: decoder uses z{d} but latents have {d_pts} coordinates")
        d = d_pts
    if d == 0:
        raise SpecError("decoder: uses no latent variable z1..zd")
    if used and used[0] < 1:
        raise SpecError("decoder: latent variables are numbered from z1")
    n = len(dec)
    if n < d:
        raise SpecError(f"dimension mismatch: n = {n} decoder outputs < d = {d} latents (need n >= d)")
    zs = latent_symbols(d)
    names = {str(z): z for z in zs}
    comps = [parse_expression(e, names, where=f"decoder[{i}]") for i, e in enumerate(dec)]
    prior_data = data.get("prior", "gaussian")
    if isinstance(prior_data, list):
        if len(prior_data) != d:
            raise SpecError(f"dimension mismatch: prior lists {len(prior_data)} factors for d = {d} latents")
        priors = tuple(parse_prior(p, where=f"prior[{k}]") for k, p in enumerate(prior_data))
    else:
        p = parse_prior(prior_data)
        priors = (p,) * d
    gamma2 = _check_gamma2(data["gamma2"]) if "gamma2" in data else ()
    points: tuple[tuple[sp.Rational, ...], ...] = ()
    if latents_data is not None:
        pts = []
        for i, p in enumerate(latents_data):
            try:
                pts.append(tuple(exact_number(v) for v in p))
            except SpecError as exc:
                raise SpecError(f"latents[{i}]: {exc}") from None
        points = tuple(pts)
    name = data.get("name", default_name)
    if not isinstance(name, str):
        raise SpecError("name: expected a string")
    meta = {"description": data.get("description", "")}
    return SymbolicModel(name, zs, sp.Matrix(comps), priors, gamma2, points, meta)


def load_spec(path: str | Path) -> SymbolicModel:
    """Read and parse a TOML spec file; every failure is a :class:`SpecError` naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SpecError(f"{path}: spec is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: malformed TOML: {exc}") from None
    try:
        return model_from_dict(data, default_name=path.stem)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def loads_spec(text: str, name: str = "model") -> SymbolicModel:
    """Parse a TOML spec given as a string."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"malformed TOML: {exc}") from None
    return model_from_dict(data, default_name=name)


def point_subs(model: SymbolicModel, point: Sequence[sp.Expr]) -> dict[sp.Symbol, sp.Expr]:
    """Substitution dict z_k -> point_k."""
    if len(point) != model.d:
        raise SpecError(f"dimension mismatch: point has {len(point)} coordinates, model has d = {model.d}")
    return dict(zip(model.latents, point))
