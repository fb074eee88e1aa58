"""hypothesis strategies for the property-based checks: matrices, decoders, priors and latent
points drawn from hypothesis primitives, so that a failing example *shrinks* to a small,
readable counterexample whose repr shows every drawn number.  Real parameters lie on the grid
k/1000 (:data:`GRID`), so shrunk values read like 0.501.

Matrices (C2, C3, C4):

- :func:`matrices`: J ∈ R^{n×d} (n ≥ d) of full column rank, entries in [−2, 2] and column
  log-scales in [−3, 3], column-normalized condition number ≤ 1e4; for d ≥ 2 half of them
  near-singular (one column close to a combination of the others, condition number ≥ 1e2);
- :func:`spd_matrices`: Λ = D (B Bᵀ + τ I) D, symmetric positive definite;
- :func:`orthogonal_matrices`: Q from the QR factorization of a drawn matrix.

Decoders with a prior and a point z0 in the prior's bulk (C11, C12, N1, N2), as
:class:`GapCase`:

- non-IMA (d = 2, n ∈ {2, 3}; c_IMA(f, z0) ≥ :data:`C_IMA_MIN`, so never an identity-like
  example): ``affine_tanh`` f(z) = A z + B tanh(C z + c); ``coupling``
  f(z) = A·T2(T1(z)), two affine coupling layers with volume-changing scales, not triangular;
  ``near_singular``, affine_tanh with A of condition number 1e2–1e4;
- IMA class (c_IMA ≡ 0): ``ortho_monotone`` f(z) = O·diag(r)·h(z), O with orthonormal
  columns, h elementwise strictly increasing (d ∈ {1, 2}); ``mobius`` f(z) =
  α·O (p − a)/‖p − a‖², p = (z1, z2, 0), a off the plane (d = 2, n ∈ {3, 4}, conformal);
- non-injective: ``fold`` f(z) = F(g(z1)², z2, …) with g odd and strictly increasing and F
  injective (affine_tanh), so x = f(z0) has exactly the two preimages (±z0_1, z0_2, …), of
  equal Laplace mass under a symmetric prior.

Every decoder but the folds is injective by construction (an affine_tanh map because its
nonlinearity is Lipschitz below σ_min(A): ‖f(z) − f(z')‖ ≥ (σ_min(A) − ‖B‖‖C‖)‖z − z'‖;
couplings and monotone h are bijections; an inversion of R³ is injective off its centre, which is off the latent plane), so x = f(z0)
has the single preimage z0 and a property may skip the mode search.  Every case satisfies, at
z0, σ_min(J) ≥ :data:`SIGMA_MIN`, cond(J) ≤ :data:`COND_MAX` and ‖∂²f‖/σ_min² ≤
:data:`CURVATURE_MAX` (hypothesis ``assume``): the O(ε²) remainder of the gap at γ² ≥ 1e6 then
stays below the 1e-9 the gap properties allow for it (a steered search in
tests/proofs_check/test_strategies.py, marked slow, checks this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from hypothesis import assume
from hypothesis import strategies as st

from numerics.jacobian import c_ima_from_jacobian, jacobian, second_derivatives
from numerics.models import Decoder, GaussianPrior1D, LogisticPrior1D, Model, Prior, StudentTPrior1D

#: Smallest singular value of J(z0) allowed (the asymptotic regime at γ² ≥ 1e6 needs
#: γ² σ_min² ≫ 1/var(prior) and the O(ε²) gap remainder ∝ 1/σ_min⁴ small).
SIGMA_MIN = 0.3
#: Largest condition number of J(z0) allowed (and the top of the near-singular range).
COND_MAX = 1e4
#: Bottom of the near-singular range of cond(J(z0)).
COND_NEAR_SINGULAR = 1e2
#: Largest curvature ratio η = ‖∂²f(z0)‖_F / σ_min(J(z0))² allowed.  ε·η² is the expansion
#: parameter of the gap in the decoder's curvature; its ε² coefficient grows like ~10·η⁴, so
#: η ≤ 4 keeps it ≲ 3e3, below the 1e4 the gap properties' truncation allowance assumes.
CURVATURE_MAX = 4.0
#: Smallest c_IMA(f, z0) of a non-IMA case: no identity-like (trivially passing) examples.
C_IMA_MIN = 0.02
#: Latent points are drawn in [−Z_BULK, Z_BULK]^d, inside the bulk of every prior below.
Z_BULK = 1.5
#: Non-injective cases keep |z0_1| ≥ FOLD_MIN so the two preimages ±z0_1 stay apart.
FOLD_MIN = 0.3

NON_IMA_FAMILIES = ("affine_tanh", "coupling", "near_singular")
IMA_FAMILIES = ("ortho_monotone", "mobius")
NONINJECTIVE_FAMILIES = ("fold",)

_HIDDEN = 2  # tanh units of an affine_tanh map


#: Drawn real parameters lie on a grid of step 1/GRID: hypothesis searches and shrinks the
#: integer k of k/GRID (towards 0), so counterexamples read like 0.731, never like the
#: subnormal or 1e-300 floats st.floats favours (which only make an entry vanish here).
GRID = 1000


def _from_grid(k: int) -> float:
    # a named function, not a lambda: hypothesis describes a lambda by parsing its source
    return k / GRID


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    """A float in [lo, hi] on the grid k/GRID (shrinks towards the grid point nearest 0)."""
    return st.integers(math.ceil(lo * GRID), math.floor(hi * GRID)).map(_from_grid)


def _array(draw, shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    """An array of independently drawn grid floats k/GRID in [lo, hi] (each k shrinks on its
    own).  Drawn as a fixed-size tuple of integers, scaled afterwards: hypothesis's cost is
    per choice and per strategy layer, and this needs one choice per entry and no map."""
    size = int(np.prod(shape))
    k = st.integers(math.ceil(lo * GRID), math.floor(hi * GRID))
    return (np.array(draw(st.tuples(*([k] * size))), dtype=np.float64) / GRID).reshape(shape)


def _fmt(a: Any) -> str:
    """Nested lists of floats printed with repr (round-trip exact)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return repr(float(a))
    return "[" + ", ".join(_fmt(v) for v in a) + "]"


def _sv(M: np.ndarray) -> np.ndarray:
    return np.linalg.svd(M, compute_uv=False)


# ----------------------------------------------------------------------------------------
# Matrices
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Matrix:
    """A drawn matrix; ``kind`` says how it was built, ``parts`` holds the drawn numbers."""

    array: np.ndarray
    kind: str = "general"
    parts: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def __repr__(self) -> str:
        """The drawn numbers (``parts``) when there are any, else the entries."""
        body = ", ".join(f"{k}={_fmt(v)}" for k, v in self.parts.items()) or _fmt(self.array)
        how = _MATRIX_FORMULAS.get(self.kind, "")
        return f"Matrix({self.kind}, {self.shape[0]}x{self.shape[1]}{', ' + how if how else ''}, {body})"


_MATRIX_FORMULAS = {
    "general": "J = M·diag(e^t)",
    "near_singular": "J = [M[:, :-1], M[:, :-1]·rho + 10^-k·M[:, -1]]·diag(e^t)",
    "orthonormal_columns": "Q of M = QR",
    "orthogonal_columns": "J = Q(M)·diag(signs·e^t)",
    "diagonal": "D = diag(signs·e^t)",
    "spd": "Λ = diag(e^log_D)(B Bᵀ + tau I)diag(e^log_D)",
}


def column_condition(J: np.ndarray) -> float:
    """Condition number of J with unit columns (the conditioning c_IMA's rounding depends on:
    c_IMA and its QR evaluation are invariant to column scaling)."""
    s = _sv(J / np.linalg.norm(J, axis=0))
    return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


@st.composite
def matrices(draw, max_d: int = 5, max_extra: int = 3, log_scale: float = 3.0, min_d: int = 1) -> Matrix:
    """J = M·diag(e^t) ∈ R^{n×d}, min_d ≤ d ≤ max_d, n = d + (0..max_extra), M's entries in
    [−2, 2], t_k ∈ [−log_scale, log_scale], with column-normalized condition number ≤ 1e4
    (full column rank).  Half of them (for d ≥ 2) near-singular by construction: M's last
    column is replaced by M[:, :-1]·ρ + 10^(−k)·M[:, -1], ρ ∈ [−1, 1]^{d−1}, k ∈ [2, 4], and
    the condition number is in [1e2, 1e4]."""
    d = draw(st.integers(min_d, max_d))
    n = d + draw(st.integers(0, max_extra))
    # column by column, the optional parts last: when the shrinker lowers d it deletes a
    # trailing column, and the draws after it stay aligned (so failures shrink to 1x1)
    M = np.stack([_array(draw, (n,), -2.0, 2.0) for _ in range(d)], 1)
    t = _array(draw, (d,), -log_scale, log_scale)
    parts: dict[str, Any] = {"M": M, "t": t}
    near = d >= 2 and draw(st.booleans())
    if near:
        rho = _array(draw, (d - 1,), -1.0, 1.0)
        k = draw(_floats(2.0, 4.0))
        M = M.copy()
        M[:, -1] = M[:, :-1] @ rho + 10.0 ** (-k) * M[:, -1]
        parts.update(rho=rho, k=k)
    assume(np.all(np.linalg.norm(M, axis=0) > 0))
    kappa = column_condition(M)
    assume(kappa <= COND_MAX and (kappa >= COND_NEAR_SINGULAR or not near))
    return Matrix(M * np.exp(t), "near_singular" if near else "general", parts)


@st.composite
def orthogonal_matrices(draw, n: int, d: int | None = None) -> Matrix:
    """Q ∈ R^{n×d} with orthonormal columns: the Q (signs fixed by diag R ≥ 0) of a drawn
    n×d matrix M with entries in [−1, 1] (Householder's Q is orthonormal to rounding even
    when M is rank deficient, so no M is rejected)."""
    d = n if d is None else d
    M = _array(draw, (n, d), -1.0, 1.0)
    Q, R = np.linalg.qr(M)
    return Matrix(Q * np.where(np.diag(R) < 0, -1.0, 1.0), "orthonormal_columns", {"M": M})


@st.composite
def orthogonal_column_matrices(draw, max_d: int = 5, max_extra: int = 3, log_scale: float = 3.0, min_d: int = 1) -> Matrix:
    """J = Q·diag(s·e^t) with orthonormal Q (:func:`orthogonal_matrices`), signs s = ±1 and
    t_k ∈ [−log_scale, log_scale]: orthogonal columns of any lengths, min_d ≤ d ≤ max_d."""
    d = draw(st.integers(min_d, max_d))
    n = d + draw(st.integers(0, max_extra))
    Q = draw(orthogonal_matrices(n, d))
    t = _array(draw, (d,), -log_scale, log_scale)
    s = np.array(draw(st.lists(st.sampled_from([1.0, -1.0]), min_size=d, max_size=d)))
    return Matrix(Q.array * (s * np.exp(t)), "orthogonal_columns", {"M": Q.parts["M"], "signs": s, "t": t})


@st.composite
def invariance_cases(draw, max_d: int = 5, max_extra: int = 3, min_d: int = 1) -> tuple[Matrix, Matrix, tuple[int, ...], Matrix]:
    """(J, D, P, O) for the invariances of c_IMA: J from :func:`matrices` (log-scales in
    [−1.5, 1.5]), D = diag(s·e^t) (s = ±1, t ∈ [−2, 2]), a permutation P of the d columns
    (as the tuple of column indices) and an orthogonal n×n O."""
    J = draw(matrices(max_d, max_extra, 1.5, min_d))
    n, d = J.shape
    t = _array(draw, (d,), -2.0, 2.0)
    s = np.array(draw(st.lists(st.sampled_from([1.0, -1.0]), min_size=d, max_size=d)))
    D = Matrix(np.diag(s * np.exp(t)), "diagonal", {"signs": s, "t": t})
    perm = tuple(draw(st.permutations(range(d))))
    O = draw(orthogonal_matrices(n))
    return J, D, perm, O


@st.composite
def spd_matrices(draw, max_d: int = 4) -> Matrix:
    """Λ = D (B Bᵀ + τ I) D with B ∈ [−2, 2]^{d×d}, τ ∈ [0.01, 1], D = diag(e^t), t ∈ [−2, 2]."""
    d = draw(st.integers(1, max_d))
    B = _array(draw, (d, d), -2.0, 2.0)
    tau = draw(_floats(0.01, 1.0))
    t = _array(draw, (d,), -2.0, 2.0)
    D = np.diag(np.exp(t))
    Lam = D @ (B @ B.T + tau * np.eye(d)) @ D
    return Matrix(0.5 * (Lam + Lam.T), "spd", {"B": B, "tau": tau, "log_D": t})


# ----------------------------------------------------------------------------------------
# Priors
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PriorSpec:
    """A factorized prior, every coordinate from one symmetric family centred at 0."""

    family: str
    param: float

    def build(self, d: int) -> Prior:
        if self.family == "gaussian":
            f = GaussianPrior1D(0.0, self.param)
        elif self.family == "logistic":
            f = LogisticPrior1D(0.0, self.param)
        else:
            f = StudentTPrior1D(self.param)
        return Prior.iid(f, d)

    def __repr__(self) -> str:
        key = {"gaussian": "var", "logistic": "scale", "student_t": "nu"}[self.family]
        return f"{self.family}({key}={self.param!r})"


@st.composite
def prior_specs(draw) -> PriorSpec:
    """Gaussian (variance 0.5–2), logistic (scale 0.5–1.5) or Student-t (ν 3–10), all symmetric."""
    fam = draw(st.sampled_from(["gaussian", "logistic", "student_t"]))
    lo, hi = {"gaussian": (0.5, 2.0), "logistic": (0.5, 1.5), "student_t": (3.0, 10.0)}[fam]
    return PriorSpec(fam, draw(_floats(lo, hi)))


@st.composite
def priors(draw, d: int) -> Prior:
    """A factorized prior with one random family for all coordinates (see :func:`prior_specs`)."""
    return draw(prior_specs()).build(d)


# ----------------------------------------------------------------------------------------
# Decoders
# ----------------------------------------------------------------------------------------


class DrawnDecoder(Decoder):
    """A decoder built from drawn numbers; its repr (and name) lists every parameter."""

    family = "drawn"

    def __init__(self, d: int, n: int, **params: Any) -> None:
        self.d, self.n = d, n
        self.params = {k: (np.asarray(v, dtype=np.float64) if not isinstance(v, DrawnDecoder) else v) for k, v in params.items()}
        self._torch: dict[tuple, dict[str, Any]] = {}
        self.name = repr(self)

    def p(self, like: torch.Tensor) -> dict[str, Any]:
        key = (like.device, like.dtype)
        if key not in self._torch:
            self._torch[key] = {k: (torch.as_tensor(v, dtype=like.dtype, device=like.device) if isinstance(v, np.ndarray) else v)
                                for k, v in self.params.items()}
        return self._torch[key]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z)
        return self.forward(z, self.p(z))

    def forward(self, z: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v!r}" if isinstance(v, DrawnDecoder) else f"{k}={_fmt(v)}" for k, v in self.params.items())
        return f"{self.family}(d={self.d}, n={self.n}, {ps})"


class AffineTanh(DrawnDecoder):
    """f(z) = A z + B tanh(C z + c)."""

    family = "affine_tanh"

    def forward(self, z, p):
        return z @ p["A"].T + torch.tanh(z @ p["C"].T + p["c"]) @ p["B"].T


class Coupling(DrawnDecoder):
    """f(z) = A·(u1, u2) with u2 = z2·e^{a1 tanh z1} + b1 tanh(w1 z1 + v1) and
    u1 = z1·e^{a2 tanh u2} + b2 tanh(w2 u2 + v2): two affine coupling layers (each a bijection
    of R², with Jacobian determinant e^{a tanh(·)} ≠ 1), then A of full column rank."""

    family = "coupling"

    def forward(self, z, p):
        a, b, w, v = p["a"], p["b"], p["w"], p["v"]
        z1, z2 = z[..., 0], z[..., 1]
        u2 = z2 * torch.exp(a[0] * torch.tanh(z1)) + b[0] * torch.tanh(w[0] * z1 + v[0])
        u1 = z1 * torch.exp(a[1] * torch.tanh(u2)) + b[1] * torch.tanh(w[1] * u2 + v[1])
        return torch.stack([u1, u2], -1) @ p["A"].T


class OrthoMonotone(DrawnDecoder):
    """IMA class: f(z) = O·diag(r)·h(z), O with orthonormal columns, r > 0, and
    h_k(t) = t + b_k tanh(w_k t + v_k) strictly increasing (b_k w_k > −1)."""

    family = "ortho_monotone"

    def forward(self, z, p):
        h = z + p["b"] * torch.tanh(p["w"] * z + p["v"])
        return (h * p["r"]) @ p["O"].T


class Mobius(DrawnDecoder):
    """IMA class (conformal, d = 2): an inversion of R³ about a point a off the latent plane,
    restricted to the plane, f(z) = α·O (p − a)/‖p − a‖² with p = (z1, z2, 0), a3 ≠ 0 and
    O ∈ R^{n×3} with orthonormal columns (n ∈ {3, 4}).  Smooth, bounded and injective on all of
    R² (an inversion is a bijection of R³ without a), and conformal there: J^T J =
    (α/‖p − a‖²)² I, so c_IMA ≡ 0.  A plane Möbius map α(z − a)/‖z − a‖² would put its pole in
    the latent plane, where E_q‖x − f(z)‖² = ∞ for every Gaussian q (ELBO* = −∞; docs/theory.md,
    C12)."""

    family = "mobius"

    def forward(self, z, p):
        w = torch.cat([z, torch.zeros_like(z[..., :1])], -1) - p["a"]
        return p["alpha"] * (w / (w * w).sum(-1, keepdim=True)) @ p["O"].T


class Fold(DrawnDecoder):
    """Non-injective: f(z) = F(g(z1)², z2, …) with g(t) = t + b tanh(w t) odd and strictly
    increasing and F an injective :class:`AffineTanh`: f(z) = f(z') iff z' = (±z1, z2, …)."""

    family = "fold"

    def forward(self, z, p):
        g = z[..., :1] + p["b"] * torch.tanh(p["w"] * z[..., :1])
        return p["F"](torch.cat([g * g, z[..., 1:]], -1))


# ----------------------------------------------------------------------------------------
# Cases: a model and a point
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class GapCase:
    """A model (drawn decoder and prior) and a latent point z0, with J(z0)'s σ_min, condition
    number and c_IMA(f, z0) (computed when drawn)."""

    decoder: DrawnDecoder
    prior: PriorSpec
    z0: tuple[float, ...]
    sigma_min: float
    cond: float
    c_ima: float
    curvature: float

    @property
    def family(self) -> str:
        return self.decoder.family

    @property
    def d(self) -> int:
        return self.decoder.d

    @property
    def n(self) -> int:
        return self.decoder.n

    @property
    def model(self) -> Model:
        return Model(self.decoder, self.prior.build(self.d), name=repr(self))

    def summary(self) -> dict[str, Any]:
        """What a property report tallies: family, d, n, c_IMA(f, z0), cond J(z0)."""
        return {"family": self.family, "d": self.d, "n": self.n, "c_ima": self.c_ima, "cond": self.cond, "curvature": self.curvature}

    def __repr__(self) -> str:
        return f"{self.decoder!r}; prior {self.prior!r}; z0 = {_fmt(self.z0)}"


def jacobian_info(dec: Decoder, z0: Sequence[float]) -> tuple[float, float, float, float]:
    """(σ_min, condition number, c_IMA, curvature ratio ‖∂²f‖_F/σ_min²) of J(z0);
    c_IMA = inf when J is numerically singular."""
    z = torch.tensor(list(z0), dtype=torch.float64)
    J = jacobian(dec, z)
    s = _sv(J.numpy())
    if not np.all(np.isfinite(s)) or s[-1] <= 0:
        return 0.0, math.inf, math.inf, math.inf
    try:
        c = float(c_ima_from_jacobian(J))
    except ValueError:  # SingularJacobianError
        c = math.inf
    curv = float(torch.linalg.vector_norm(second_derivatives(dec, z))) / float(s[-1]) ** 2
    return float(s[-1]), float(s[0] / s[-1]), c, curv


def _points(draw, d: int) -> tuple[float, ...]:
    return tuple(draw(st.lists(_floats(-Z_BULK, Z_BULK), min_size=d, max_size=d)))


def _affine_tanh(draw, d: int, n: int, A: np.ndarray | None = None) -> AffineTanh:
    """A z + B tanh(C z + c): A ∈ [−2, 2]^{n×d} with σ_min(A) ≥ SIGMA_MIN (or the given A),
    B ∈ [−1, 1]^{n×2}, C ∈ [−1.5, 1.5]^{2×d}, c ∈ [−1, 1]²; B is scaled down when needed so that
    ‖B‖‖C‖ ≤ 0.8 σ_min(A) (injective, J of full rank everywhere)."""
    if A is None:
        A = _array(draw, (n, d), -2.0, 2.0)
    smin = _sv(A)[-1]
    assume(smin >= SIGMA_MIN)
    B = _array(draw, (n, _HIDDEN), -1.0, 1.0)
    C = _array(draw, (_HIDDEN, d), -1.5, 1.5)
    c = _array(draw, (_HIDDEN,), -1.0, 1.0)
    lip = _sv(B)[0] * _sv(C)[0]
    if lip > 0.8 * smin:
        B = B * (0.8 * smin / lip)
    return AffineTanh(d, n, A=A, B=B, C=C, c=c)


def _near_singular_A(draw, n: int) -> np.ndarray:
    """A = σ·U diag(κ, 1) Vᵀ (n×2): U orthonormal columns, V the rotation by φ ∈ [0.2, 1.37]
    (so A's columns are far from orthogonal), κ = 10^k with k ∈ [2, 4], σ ∈ [0.5, 1.5]."""
    U = draw(orthogonal_matrices(n, 2)).array
    k = draw(_floats(2.0, 4.0))
    sigma = draw(_floats(0.5, 1.5))
    phi = draw(_floats(0.2, 1.37))
    V = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
    return sigma * U @ np.diag([10.0**k, 1.0]) @ V.T


def _coupling(draw, n: int) -> Coupling:
    A = _array(draw, (n, 2), -2.0, 2.0)
    assume(_sv(A)[-1] >= SIGMA_MIN)
    return Coupling(2, n, A=A, a=_array(draw, (2,), -1.0, 1.0), b=_array(draw, (2,), -1.0, 1.0),
                    w=_array(draw, (2,), -1.5, 1.5), v=_array(draw, (2,), -1.0, 1.0))


def _admissible(draw_case: GapCase, near_singular: bool = False) -> None:
    assume(draw_case.sigma_min >= SIGMA_MIN and draw_case.cond <= COND_MAX and math.isfinite(draw_case.c_ima)
           and draw_case.curvature <= CURVATURE_MAX)
    if near_singular:
        assume(draw_case.cond >= COND_NEAR_SINGULAR)


def _case(dec: DrawnDecoder, prior: PriorSpec, z0: tuple[float, ...]) -> GapCase:
    return GapCase(dec, prior, z0, *jacobian_info(dec, z0))


@st.composite
def non_ima_decoders(draw, family: str | None = None) -> DrawnDecoder:
    """A non-IMA decoder, d = 2, n ∈ {2, 3}, of one of :data:`NON_IMA_FAMILIES` (injective,
    J of full column rank everywhere)."""
    family = family or draw(st.sampled_from(NON_IMA_FAMILIES))
    n = draw(st.sampled_from([2, 3]))
    if family == "affine_tanh":
        return _affine_tanh(draw, 2, n)
    if family == "coupling":
        return _coupling(draw, n)
    if family == "near_singular":
        dec = _affine_tanh(draw, 2, n, _near_singular_A(draw, n))
        dec.family = "near_singular"
        dec.name = repr(dec)
        return dec
    raise ValueError(f"unknown non-IMA family {family!r}")


@st.composite
def non_ima_cases(draw, family: str | None = None) -> GapCase:
    """A non-IMA decoder (:func:`non_ima_decoders`), a prior and z0 ∈ [−1.5, 1.5]² with
    c_IMA(f, z0) ≥ C_IMA_MIN, σ_min(J(z0)) ≥ SIGMA_MIN, cond J(z0) ≤ COND_MAX (≥ 1e2 for
    ``near_singular``)."""
    dec = draw(non_ima_decoders(family))
    case = _case(dec, draw(prior_specs()), _points(draw, 2))
    _admissible(case, dec.family == "near_singular")
    assume(case.c_ima >= C_IMA_MIN)
    return case


@st.composite
def ima_decoders(draw, family: str | None = None) -> DrawnDecoder:
    """An IMA-class decoder: ``mobius`` (d = 2, n ∈ {3, 4}) or ``ortho_monotone`` (d ∈ {1, 2},
    drawn as 2 first so that at least half the IMA-class examples have d = 2, n ∈ {d, d + 1})."""
    family = family or draw(st.sampled_from(IMA_FAMILIES))
    if family == "mobius":  # a = (ρ cos ψ, ρ sin ψ, h), ‖a‖ ∈ [1.5, 7.2]; α = λ‖a‖², so |J(0)| = λ
        n = 3 + draw(st.integers(0, 1))
        O = draw(orthogonal_matrices(n, 3)).array
        rho = draw(_floats(0.0, 6.0))
        psi = draw(_floats(-math.pi, math.pi))
        h = draw(_floats(1.5, 4.0)) * draw(st.sampled_from([1.0, -1.0]))
        lam = draw(_floats(0.5, 2.0))
        return Mobius(2, n, alpha=lam * (rho**2 + h**2), a=[rho * math.cos(psi), rho * math.sin(psi), h], O=O)
    d = draw(st.sampled_from([2, 1]))
    n = d + draw(st.integers(0, 1))
    O = draw(orthogonal_matrices(n, d)).array
    b = _array(draw, (d,), -1.0, 1.0)
    w = _array(draw, (d,), -1.5, 1.5)
    assume(np.all(b * w >= -0.7))  # h' ≥ 0.3 > 0: strictly increasing
    return OrthoMonotone(d, n, O=O, r=_array(draw, (d,), 0.3, 3.0), b=b, w=w, v=_array(draw, (d,), -1.0, 1.0))


@st.composite
def ima_cases(draw, family: str | None = None) -> GapCase:
    """An IMA-class decoder (:func:`ima_decoders`), a prior and z0 ∈ [−1.5, 1.5]^d."""
    dec = draw(ima_decoders(family))
    case = _case(dec, draw(prior_specs()), _points(draw, dec.d))
    _admissible(case)
    return case


@st.composite
def noninjective_cases(draw, d: int | None = None) -> GapCase:
    """``fold``: f(z) = F(g(z1)², z2, …), d ∈ {2, 1} (2 drawn first), F an injective
    affine_tanh map to R^n, n ∈ {d, d + 1}; g(t) = t + b tanh(w t) with b w ≥ −0.7 (odd,
    strictly increasing).  z0 with |z0_1| ∈ [FOLD_MIN, Z_BULK]: x = f(z0) has the two preimages
    (±z0_1, z0_2, …), and under the symmetric prior they carry the same Laplace mass.  ``d``
    fixes the latent dimension."""
    d = d or draw(st.sampled_from([2, 1]))
    n = d + draw(st.integers(0, 1))
    F = _affine_tanh(draw, d, n)
    b = draw(_floats(-1.0, 1.0))
    w = draw(_floats(-1.5, 1.5))
    assume(b * w >= -0.7)
    dec = Fold(d, n, b=b, w=w, F=F)
    z0 = (draw(st.sampled_from([1.0, -1.0])) * draw(_floats(FOLD_MIN, Z_BULK)),) + _points(draw, d - 1)
    case = _case(dec, draw(prior_specs()), z0)
    _admissible(case)
    return case


def gap_cases(kind: str, stratum: str | int | None = None) -> st.SearchStrategy[GapCase]:
    """Cases for a gap property: ``"non_ima"`` (alias ``"triangular"``), ``"ima"`` or
    ``"noninjective"``; ``stratum`` fixes the family (or, for ``"noninjective"``, d)."""
    if kind in ("non_ima", "triangular"):
        return non_ima_cases(stratum)
    if kind == "ima":
        return ima_cases(stratum)
    if kind == "noninjective":
        return noninjective_cases(stratum)
    raise ValueError(f"unknown decoder kind {kind!r}; known: non_ima, ima, noninjective")


#: The strata a gap property splits its examples over, per kind: every family (and, for the
#: folds, both latent dimensions, d = 2 first) gets its share even with few examples.
GAP_STRATA: dict[str, tuple] = {"non_ima": NON_IMA_FAMILIES, "ima": IMA_FAMILIES, "noninjective": (2, 1)}


@st.composite
def models_and_points(draw, kind: str) -> tuple[Model, list[float]]:
    """(Model, z0 as a list) of a :func:`gap_cases` case."""
    case = draw(gap_cases(kind))
    return case.model, list(case.z0)


@dataclass(frozen=True, repr=False)
class BatchCase:
    """A non-IMA decoder, a prior and a batch of latents drawn from the prior (seeded), with
    the pointwise c_IMA(f, z) over the batch."""

    decoder: DrawnDecoder
    prior: PriorSpec
    seed: int
    z: torch.Tensor
    c_ima: np.ndarray

    def summary(self) -> dict[str, Any]:
        return {"family": self.decoder.family, "n": self.decoder.n, "c_ima_mean": float(self.c_ima.mean()),
                "c_ima_std": float(self.c_ima.std())}

    def __repr__(self) -> str:
        return f"{self.decoder!r}; prior {self.prior!r}; batch of {len(self.z)} prior samples (seed {self.seed})"


#: A batch whose pointwise c_IMA varies by less than this (std) has a nearly constant J:
#: there the batch-mean Jacobian contrast equals the mean contrast (exactly for linear f).
BATCH_C_IMA_SPREAD = 0.01


@st.composite
def non_ima_batches(draw, num: int = 64, seed: int = 0, family: str | None = None) -> BatchCase:
    """A non-IMA decoder (:func:`non_ima_decoders`), a prior, ``num`` latents from the prior
    (torch generator seeded with ``seed``), with std of c_IMA(f, z) over the batch ≥
    :data:`BATCH_C_IMA_SPREAD` (J varies: the decoder is not close to linear)."""
    dec = draw(non_ima_decoders(family))
    spec = draw(prior_specs())
    z = spec.build(2).sample(num, torch.Generator().manual_seed(seed))
    c = c_ima_from_jacobian(jacobian(dec, z)).numpy()
    assume(float(c.std()) >= BATCH_C_IMA_SPREAD)
    return BatchCase(dec, spec, seed, z, c)
