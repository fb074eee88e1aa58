"""Decoders f: R^d -> R^n and factorized priors p0 as batched float64 torch callables.

Notation follows docs/theory.md: latents z ∈ R^d, observations x ∈ R^n (n ≥ d), prior
log-density ℓ(z) = Σ_k ℓ_k(z_k).  Every callable acts on tensors of shape (..., d) and is
built only from torch operations, so ``torch.func`` (jacrev, hessian, vmap) applies to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

Tensor = torch.Tensor
DTYPE = torch.float64


class ModelError(ValueError):
    """A numerical model is ill-formed (dimension mismatch, bad parameter, ...)."""


# ----------------------------------------------------------------------------------------
# Decoders
# ----------------------------------------------------------------------------------------


class Decoder:
    """Decoder mean f: R^d -> R^n; ``__call__`` maps (..., d) to (..., n)."""

    d: int
    n: int
    name: str = "decoder"

    def __call__(self, z: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _check(self, z: Tensor) -> None:
        if z.shape[-1] != self.d:
            raise ModelError(f"{self.name}: expected latents with last dimension d = {self.d}, got shape {tuple(z.shape)}")


class CallableDecoder(Decoder):
    """Wrap a torch callable ``fn`` mapping (..., d) -> (..., n)."""

    def __init__(self, fn: Callable[[Tensor], Tensor], d: int, n: int, name: str = "decoder") -> None:
        if n < d:
            raise ModelError(f"{name}: need n >= d, got n = {n}, d = {d}")
        self.fn, self.d, self.n, self.name = fn, d, n, name

    def __call__(self, z: Tensor) -> Tensor:
        self._check(z)
        return self.fn(z)


class _ParamCache:
    """Move constant tensors lazily to the device/dtype of the input."""

    def __init__(self, **arrays: np.ndarray) -> None:
        self._np = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
        self._cache: dict[tuple, dict[str, Tensor]] = {}

    def get(self, like: Tensor) -> dict[str, Tensor]:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = {k: torch.as_tensor(v, dtype=like.dtype, device=like.device) for k, v in self._np.items()}
        return self._cache[key]


class LinearDecoder(Decoder):
    """f(z) = A z (docs/theory.md C5)."""

    def __init__(self, A: np.ndarray | Sequence[Sequence[float]], name: str = "linear") -> None:
        A = np.atleast_2d(np.asarray(A, dtype=np.float64))
        self.n, self.d = A.shape
        if self.n < self.d:
            raise ModelError(f"{name}: need n >= d, got A of shape {A.shape}")
        self.A = A
        self.name = name
        self._p = _ParamCache(A=A)

    def __call__(self, z: Tensor) -> Tensor:
        self._check(z)
        return z @ self._p.get(z)["A"].T


class TriangularDecoder(Decoder):
    """Non-IMA triangular map f_i(z) = z_i + a · Σ_{j<i} tanh(z_j)·b_ij (n = d), a smooth
    lower-triangular diffeomorphism whose Jacobian columns are not orthogonal."""

    def __init__(self, d: int, strength: float = 1.0, seed: int = 0, name: str = "triangular") -> None:
        rng = np.random.default_rng(seed)
        B = np.tril(rng.normal(size=(d, d)), k=-1) * strength
        self.d = self.n = d
        self.B = B
        self.name = name
        self._p = _ParamCache(B=B)

    def __call__(self, z: Tensor) -> Tensor:
        self._check(z)
        return z + torch.tanh(z) @ self._p.get(z)["B"].T


class IMADecoder(Decoder):
    """IMA-class map f(z) = O · h(z), O ∈ R^{n×d} with orthonormal columns, h elementwise
    h_k(z_k) = a_k z_k + b_k tanh(z_k) (a_k > 0, b_k > -a_k so h_k is strictly increasing).
    Its Jacobian O·diag(h'(z)) has orthogonal columns everywhere (docs/theory.md C12)."""

    def __init__(self, d: int, n: int | None = None, seed: int = 0, name: str = "ima") -> None:
        n = d if n is None else n
        if n < d:
            raise ModelError(f"{name}: need n >= d")
        rng = np.random.default_rng(seed)
        O, _ = np.linalg.qr(rng.normal(size=(n, d)))
        a = rng.uniform(0.5, 1.5, size=d)
        b = rng.uniform(-0.4, 0.8, size=d) * a
        self.d, self.n, self.O, self.a, self.b, self.name = d, n, O, a, b, name
        self._p = _ParamCache(O=O, a=a, b=b)

    def __call__(self, z: Tensor) -> Tensor:
        self._check(z)
        p = self._p.get(z)
        return (p["a"] * z + p["b"] * torch.tanh(z)) @ p["O"].T


class MobiusDecoder(Decoder):
    """Möbius transform (an inversion composed with a rotation and a scaling), a conformal map
    of R^d, d ≥ 2, hence IMA class (docs/theory.md C12): f(z) = α · O (z − a)/‖z − a‖², with the pole a at
    distance ``pole_distance`` from the origin and α = pole_distance² so that |J| ≈ 1 near 0."""

    def __init__(self, d: int, seed: int = 0, pole_distance: float = 4.0, name: str = "mobius") -> None:
        rng = np.random.default_rng(seed)
        O, _ = np.linalg.qr(rng.normal(size=(d, d)))
        u = rng.normal(size=d)
        a = pole_distance * u / np.linalg.norm(u)
        self.d = self.n = d
        self.alpha = pole_distance**2
        self.O, self.a, self.name = O, a, name
        self._p = _ParamCache(O=O, a=a)

    def __call__(self, z: Tensor) -> Tensor:
        self._check(z)
        p = self._p.get(z)
        w = z - p["a"]
        return self.alpha * (w / (w * w).sum(-1, keepdim=True)) @ p["O"].T


class MLPDecoder(Decoder):
    """Smooth seeded MLP f(z) = W2 tanh(W1 z + c1) + z-skip (general), or its
    triangular version (masked weights, autoregressive: f_i depends on z_1..z_i only).
    The identity skip term keeps f injective for the default weight scale."""

    def __init__(
        self,
        d: int,
        n: int | None = None,
        hidden: int = 16,
        seed: int = 0,
        scale: float = 0.5,
        triangular: bool = False,
        name: str | None = None,
    ) -> None:
        n = d if n is None else n
        if n < d:
            raise ModelError("MLP decoder: need n >= d")
        rng = np.random.default_rng(seed)
        W1 = rng.normal(size=(hidden, d)) / math.sqrt(d)
        c1 = rng.normal(size=hidden) * 0.1
        W2 = rng.normal(size=(n, hidden)) * scale / math.sqrt(hidden)
        skip = np.zeros((n, d))
        skip[:d, :d] = np.eye(d)
        if n > d:
            skip[d:, :] = rng.normal(size=(n - d, d)) * 0.3
        if triangular:
            if n != d:
                raise ModelError("triangular MLP needs n = d")
            # hidden unit h belongs to input block h % d; it may only feed outputs i > block
            blocks = np.arange(hidden) % d
            W1 = W1 * (np.arange(d)[None, :] == blocks[:, None])
            W2 = W2 * (np.arange(d)[:, None] > blocks[None, :])
        self.d, self.n = d, n
        self.name = name or ("triangular_mlp" if triangular else "mlp")
        self._p = _ParamCache(W1=W1, c1=c1, W2=W2, S=skip)

    def __call__(self, z: Tensor) -> Tensor:
        self._check(z)
        p = self._p.get(z)
        return z @ p["S"].T + torch.tanh(z @ p["W1"].T + p["c1"]) @ p["W2"].T


# ----------------------------------------------------------------------------------------
# Priors
# ----------------------------------------------------------------------------------------


class Prior1D:
    """One factor p_k of p0; ``log_prob`` is ℓ_k, elementwise.

    ``kinks``: points where ℓ_k is not differentiable (empty for a smooth prior).  A factor
    may offer :meth:`gaussian_expectation`, E_{N(m, v)}[ℓ_k] in closed form; the ELBO then
    uses it instead of quadrature (for a kinked ℓ_k quadrature converges slowly, the closed
    form is smooth in (m, v))."""

    name: str = "prior"
    kinks: tuple[float, ...] = ()

    def log_prob(self, t: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def gaussian_expectation(self, mean: Tensor, var: Tensor) -> Tensor | None:
        """E_{t ~ N(mean, var)}[ℓ_k(t)] in closed form, or None when there is none."""
        return None

    def smoothed_log_prob(self, t: Tensor, width: float) -> Tensor:
        """ℓ_k with its kinks smoothed over a relative ``width`` (ℓ_k itself when it has none)."""
        return self.log_prob(t)

    def sample(self, shape: tuple[int, ...], generator: torch.Generator, dtype=DTYPE, device="cpu") -> Tensor:
        u = torch.rand(shape, generator=generator, dtype=dtype, device="cpu").clamp(1e-300, 1 - 1e-16)
        return self.icdf(u).to(device)

    def icdf(self, u: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class GaussianPrior1D(Prior1D):
    """ℓ(t) = -(t-m)²/(2v) - ½ log(2πv)."""

    mean: float = 0.0
    var: float = 1.0
    name: str = "gaussian"

    def __post_init__(self) -> None:
        if not (self.var > 0 and math.isfinite(self.var)):
            raise ModelError(f"gaussian prior: variance must be finite and > 0, got {self.var}")

    def log_prob(self, t: Tensor) -> Tensor:
        return -((t - self.mean) ** 2) / (2 * self.var) - 0.5 * math.log(2 * math.pi * self.var)

    def icdf(self, u: Tensor) -> Tensor:
        return self.mean + math.sqrt(self.var) * math.sqrt(2.0) * torch.special.erfinv(2 * u - 1)


@dataclass
class LogisticPrior1D(Prior1D):
    """ℓ(t) = -y - 2 log(1 + e^{-y}) - log s, y = (t - loc)/s (evaluated with softplus)."""

    loc: float = 0.0
    scale: float = 1.0
    name: str = "logistic"

    def __post_init__(self) -> None:
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ModelError(f"logistic prior: scale must be finite and > 0, got {self.scale}")

    def log_prob(self, t: Tensor) -> Tensor:
        y = (t - self.loc) / self.scale
        return -y - 2 * torch.nn.functional.softplus(-y) - math.log(self.scale)

    def icdf(self, u: Tensor) -> Tensor:
        return self.loc + self.scale * (torch.log(u) - torch.log1p(-u))


@dataclass
class StudentTPrior1D(Prior1D):
    """ℓ(t) = log Γ((ν+1)/2) - log Γ(ν/2) - ½ log(νπ) - (ν+1)/2 · log(1 + t²/ν)."""

    nu: float = 5.0
    name: str = "student_t"

    def __post_init__(self) -> None:
        if not (self.nu > 0 and math.isfinite(self.nu)):
            raise ModelError(f"student_t prior: nu must be finite and > 0, got {self.nu}")
        self._c = math.lgamma((self.nu + 1) / 2) - math.lgamma(self.nu / 2) - 0.5 * math.log(self.nu * math.pi)

    def log_prob(self, t: Tensor) -> Tensor:
        return self._c - (self.nu + 1) / 2 * torch.log1p(t * t / self.nu)

    def icdf(self, u: Tensor) -> Tensor:
        from scipy import stats

        return torch.as_tensor(stats.t.ppf(u.cpu().numpy(), self.nu), dtype=u.dtype)


@dataclass
class LaplacePrior1D(Prior1D):
    """ℓ(t) = -|t - loc|/b - log(2b) (b = ``scale``): the paper's Laplace prior, with a kink at
    t = loc (``kinks``).

    Its Gaussian expectation is smooth in (m, v) although ℓ is not (σ = √v, y = m − loc):
    E|y + σξ| = σ √(2/π) e^{−y²/(2σ²)} + y · erf(y/(σ√2)), so
    E_{N(m, v)}[ℓ] = −E|y + σξ|/b − log(2b)."""

    loc: float = 0.0
    scale: float = 1.0
    name: str = "laplace"

    def __post_init__(self) -> None:
        if not (self.scale > 0 and math.isfinite(self.scale)) or not math.isfinite(self.loc):
            raise ModelError(f"laplace prior: scale must be finite and > 0 and loc finite, got loc = {self.loc}, "
                             f"scale = {self.scale}")
        self.kinks = (float(self.loc),)

    def log_prob(self, t: Tensor) -> Tensor:
        return -(t - self.loc).abs() / self.scale - math.log(2 * self.scale)

    def smoothed_log_prob(self, t: Tensor, width: float) -> Tensor:
        """|t − loc| replaced by √((t − loc)² + (width·b)²): smooth, within width·b of ℓ."""
        y = t - self.loc
        return -torch.sqrt(y * y + (width * self.scale) ** 2) / self.scale - math.log(2 * self.scale)

    def gaussian_expectation(self, mean: Tensor, var: Tensor) -> Tensor:
        y = mean - self.loc
        sd = torch.sqrt(var)
        e_abs = sd * math.sqrt(2 / math.pi) * torch.exp(-0.5 * (y / sd) ** 2) + y * torch.special.erf(y / (sd * math.sqrt(2)))
        return -e_abs / self.scale - math.log(2 * self.scale)

    def icdf(self, u: Tensor) -> Tensor:
        v = u - 0.5
        return self.loc - self.scale * torch.sign(v) * torch.log1p(-2 * v.abs())


class ExpressionPrior1D(Prior1D):
    """A user-given log-density ℓ̃(t) (torch callable), normalized numerically:
    ℓ(t) = ℓ̃(t) - log ∫ exp ℓ̃.  The normalizer is computed with adaptive quadrature
    (scipy.integrate.quad, relative tolerance 1e-13); ``log_normalizer_error`` is quad's
    own error estimate propagated to the log."""

    def __init__(self, fn: Callable[[Tensor], Tensor], name: str = "custom") -> None:
        from scipy import integrate

        self.fn, self.name = fn, name

        with np.errstate(all="ignore"):
            # find the bulk: scan a log-spaced grid for the maximum of ℓ̃
            grid = np.concatenate([-np.logspace(3, -3, 200), [0.0], np.logspace(-3, 3, 200)])
            vals = fn(torch.as_tensor(grid, dtype=DTYPE)).numpy()
        if not np.any(np.isfinite(vals)):
            raise ModelError(f"{name}: log-density is not finite anywhere on [-1e3, 1e3]")
        finite_vals = np.where(np.isfinite(vals), vals, -np.inf)
        imax = int(np.argmax(finite_vals))
        if imax in (0, len(grid) - 1) or finite_vals[0] >= finite_vals[imax] - 30 or finite_vals[-1] >= finite_vals[imax] - 30:
            raise ModelError(f"{name}: exp(logpdf) is not integrable: the log-density does not decay at ±1e3")
        self._shift = float(finite_vals[imax])
        center = float(grid[imax])

        def dens_shifted(t: float) -> float:
            v = float(fn(torch.tensor(t, dtype=DTYPE))) - self._shift
            if v > 700 or math.isnan(v):
                raise ModelError(f"{name}: log-density is unbounded or NaN near t = {t:g}")
            return math.exp(v) if v > -745 else 0.0

        total, err = 0.0, 0.0
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for a, b in ((-np.inf, center), (center, np.inf)):
                val, e = integrate.quad(dens_shifted, a, b, epsabs=0.0, epsrel=1e-13, limit=500)
                total += val
                err += e
        if not (total > 0 and math.isfinite(total)):
            raise ModelError(f"{name}: exp(logpdf) is not integrable (integral = {total})")
        if total > 0 and err / total > 1e-6:
            raise ModelError(f"{name}: cannot normalize exp(logpdf) accurately (relative error {err / total:.2e}); is it integrable?")
        self.log_normalizer = self._shift + math.log(total)
        self.log_normalizer_error = err / total
        self._grid: tuple[np.ndarray, np.ndarray] | None = None

    def log_prob(self, t: Tensor) -> Tensor:
        return self.fn(t) - self.log_normalizer

    def icdf(self, u: Tensor) -> Tensor:
        """Inverse CDF by monotone interpolation of a tabulated CDF (for Monte Carlo only)."""
        if self._grid is None:
            xs = np.linspace(-60, 60, 240001)
            with np.errstate(all="ignore"):
                dens = np.exp(self.fn(torch.as_tensor(xs, dtype=DTYPE)).numpy() - self.log_normalizer)
            dens = np.nan_to_num(dens)
            cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(xs))])
            cdf /= cdf[-1]
            keep = np.concatenate([[True], np.diff(cdf) > 0])
            self._grid = (cdf[keep], xs[keep])
        c, xs = self._grid
        return torch.as_tensor(np.interp(u.cpu().numpy(), c, xs), dtype=u.dtype)


class Prior:
    """Factorized prior p0(z) = Π_k p_k(z_k); ``log_prob`` is ℓ(z) = Σ_k ℓ_k(z_k)."""

    def __init__(self, factors: Sequence[Prior1D]) -> None:
        self.factors = tuple(factors)
        self.d = len(self.factors)
        self._same = all(f is self.factors[0] for f in self.factors)

    @property
    def kinks(self) -> list[tuple[int, float]]:
        """(k, t) for every kink t of factor k (points where ℓ is not differentiable in z_k)."""
        return [(k, t) for k, f in enumerate(self.factors) for t in f.kinks]

    @property
    def has_gaussian_expectation(self) -> bool:
        """Whether some factor offers E_{N(m, v)}[ℓ_k] in closed form (see Prior1D)."""
        return any(type(f).gaussian_expectation is not Prior1D.gaussian_expectation for f in self.factors)

    def expected_log_prob(self, z: Tensor, w: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """E_q[ℓ(z)] for q with marginals N(mean_k, var_k): each factor's closed form where it has
        one, else the quadrature rule (nodes ``z`` (N, d) of q with weights ``w``, summing to 1)."""
        total = torch.zeros((), dtype=z.dtype, device=z.device)
        for k, f in enumerate(self.factors):
            e = f.gaussian_expectation(mean[k], var[k])
            total = total + (e if e is not None else (w * f.log_prob(z[..., k])).sum())
        return total

    @classmethod
    def iid(cls, factor: Prior1D, d: int) -> "Prior":
        return cls([factor] * d)

    @property
    def name(self) -> str:
        names = {f.name for f in self.factors}
        return names.pop() if len(names) == 1 else "[" + ",".join(f.name for f in self.factors) + "]"

    def log_prob(self, z: Tensor) -> Tensor:
        if z.shape[-1] != self.d:
            raise ModelError(f"prior: expected last dimension d = {self.d}, got shape {tuple(z.shape)}")
        if self._same:
            return self.factors[0].log_prob(z).sum(-1)
        return sum(f.log_prob(z[..., k]) for k, f in enumerate(self.factors))

    def sample(self, num: int, generator: torch.Generator, device: str | torch.device = "cpu") -> Tensor:
        cols = [f.sample((num,), generator) for f in self.factors]
        return torch.stack(cols, -1).to(device)


@dataclass
class Model:
    """A decoder and a prior with matching d: the generative model p0(z) N(x; f(z), γ⁻² I)."""

    decoder: Decoder
    prior: Prior
    name: str = "model"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.decoder.d != self.prior.d:
            raise ModelError(f"dimension mismatch: decoder has d = {self.decoder.d}, prior has d = {self.prior.d}")

    @property
    def d(self) -> int:
        return self.decoder.d

    @property
    def n(self) -> int:
        return self.decoder.n


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without CUDA raises ModelError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda requested but CUDA is not available on this machine")
    return dev
