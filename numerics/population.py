"""Population-level objectives over a data distribution (docs/theory.md, claim C17).

For data x ~ p_γ(x; f) — z ~ p0, x = f(z) + γ⁻¹ ξ, ξ ~ N(0, I_n), the decoder likelihood
*with* its observation noise — and candidate decoders f_θ (with f_0 = f), this module
estimates

    L(θ) = E_x[log p_γ(x; f_θ)]          (population log-likelihood, the negative cross-entropy)
    E(θ) = E_x[ELBO*(x; f_θ)]            (population ELBO*, mean-field Gaussian encoder)
    E_full(θ) = E_x[sup_{μ,Σ} ELBO(x; μ, Σ; f_θ)]   (full-covariance encoder, claim C14)

by Monte Carlo over x, each x scored *exactly* (Gauss–Hermite log p and ELBO* from
:mod:`numerics.posterior` and :mod:`numerics.elbo`, quadrature errors ~1e-12).  The same x
samples are used for every candidate (paired Monte Carlo), so the differences L(0) − L(θ),
E(0) − E(θ) have standard errors from the per-sample differences, far smaller than the
standard errors of L and E themselves.

Absolute values.  The numerics return *reduced* values that drop the divergent term
(n−d)/2 · log(γ²/2π); the reduction is exact for every x, on or off the image of f (the
reduced log-joint keeps −γ²/2 ‖x − f(z)‖² in full), so adding
:func:`numerics.posterior.divergent_term` back gives the absolute log p_γ(x) and ELBO*(x).

Monte Carlo design.  :func:`draw_population` draws common random numbers (z_i, ξ_i) once; the
data at any γ² are x_i = f(z_i) + γ⁻¹ ξ_i, so the same draw can be reused across γ² and the
objectives are smooth functions of γ⁻² sample by sample.  With ``antithetic=True`` every
(z_i, ξ_i) also contributes x_i⁻ = f(z_i) − γ⁻¹ ξ_i; the pair is one Monte Carlo *group*: the
group means are i.i.d., standard errors are computed from them, and the odd powers of γ⁻¹ (the
leading noise term of a difference) cancel within each group.  Each row of x is still
marginally distributed as p_γ(x; f), so every estimate is unbiased.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .elbo import elbo_star, elbo_star_fullcov
from .models import Decoder, Model, ModelError
from .posterior import divergent_term, find_modes, log_marginal_gh

Tensor = torch.Tensor

__all__ = [
    "rotation_matrix", "RotatedDecoder", "rotated_model", "PopulationDraw", "draw_population",
    "GroupMean", "group_mean", "CandidateObjectives", "PopulationObjectives", "population_objectives",
    "stack_candidates",
]

#: Items (candidates × rows) above which a tqdm progress bar is shown by default.
PROGRESS_ITEMS = 2000


# ----------------------------------------------------------------------------------------
# The rotated family f∘R_θ
# ----------------------------------------------------------------------------------------


def rotation_matrix(d: int, theta: float, plane: tuple[int, int] = (0, 1)) -> np.ndarray:
    """R_θ ∈ SO(d): the rotation by θ in the coordinate plane ``plane`` (identity elsewhere)."""
    i, j = plane
    if d < 2 or not (0 <= i < d and 0 <= j < d and i != j):
        raise ModelError(f"rotation plane {plane} is not a pair of distinct coordinates of R^{d}")
    if not math.isfinite(theta):
        raise ModelError(f"rotation angle must be finite, got {theta}")
    R = np.eye(d)
    c, s = math.cos(theta), math.sin(theta)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


class RotatedDecoder(Decoder):
    """f∘R_θ: z ↦ f(R_θ z).  Its Jacobian is J_f(R_θ z) R_θ; under a rotation-invariant prior
    (the standard Gaussian) it generates exactly the same data distribution as f."""

    def __init__(self, base: Decoder, theta: float, plane: tuple[int, int] = (0, 1), name: str | None = None) -> None:
        self.base, self.theta, self.plane = base, float(theta), plane
        self.d, self.n = base.d, base.n
        self.R = rotation_matrix(base.d, self.theta, plane)
        self.name = name or f"{base.name}∘R({self.theta:.6g})"
        self._cache: dict[tuple, Tensor] = {}

    def _rot(self, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self.R, dtype=like.dtype, device=like.device)
        return self._cache[key]

    def __call__(self, z: Tensor) -> Tensor:
        self._check(z)
        return self.base(z @ self._rot(z).T)


def rotated_model(model: Model, theta: float, plane: tuple[int, int] = (0, 1)) -> Model:
    """The candidate f∘R_θ with the same prior as ``model``."""
    dec = RotatedDecoder(model.decoder, theta, plane)
    return Model(dec, model.prior, name=f"{model.name}∘R({float(theta):.6g})", meta={"theta": float(theta), "plane": plane})


# ----------------------------------------------------------------------------------------
# Sampling x ~ p_γ(x; f) with common random numbers
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PopulationDraw:
    """Common random numbers for x ~ p_γ(x; f): rows (z_r, ξ_r, sign_r), r = 0..N−1, and the
    Monte Carlo group of each row (see module doc).  ``x(model, γ²)`` = f(z) + sign·γ⁻¹·ξ."""

    Z: Tensor  # (N, d) latents drawn from p0
    xi: Tensor  # (N, n) standard normal noise
    sign: Tensor  # (N,) +1, or −1 for the antithetic partner
    groups: np.ndarray  # (N,) group index of each row
    seed: int
    antithetic: bool

    @property
    def num_rows(self) -> int:
        return int(self.Z.shape[0])

    @property
    def num_groups(self) -> int:
        return int(self.groups.max()) + 1 if self.groups.size else 0

    def x(self, model: Model, gamma2: float) -> Tensor:
        """The data x_r = f(z_r) + sign_r · ξ_r / γ for the generating ``model`` at precision γ²."""
        _check_gamma2(gamma2)
        if model.d != self.Z.shape[1] or model.n != self.xi.shape[1]:
            raise ModelError(f"population draw has d = {self.Z.shape[1]}, n = {self.xi.shape[1]}; model {model.name} has d = {model.d}, n = {model.n}")
        X = model.decoder(self.Z) + (self.sign / math.sqrt(gamma2))[:, None] * self.xi
        if not bool(torch.isfinite(X).all()):
            raise FloatingPointError(f"the decoder {model.name} is not finite at some sampled latent")
        return X


def draw_population(model: Model, num_groups: int, seed: int, antithetic: bool = True,
                    device: str | torch.device = "cpu") -> PopulationDraw:
    """Draw ``num_groups`` i.i.d. groups (z ~ p0, ξ ~ N(0, I_n)) with a torch.Generator seeded
    by ``seed``; with ``antithetic`` each group has two rows (+ξ, −ξ), else one.  The same seed
    gives the same draw, whatever γ² the data are later formed at."""
    if num_groups < 2:
        raise ValueError(f"need at least 2 Monte Carlo groups for a standard error, got {num_groups}")
    gen = torch.Generator().manual_seed(int(seed))
    Z = model.prior.sample(num_groups, gen)
    xi = torch.randn(num_groups, model.n, generator=gen, dtype=torch.float64)
    groups = np.arange(num_groups)
    sign = torch.ones(num_groups, dtype=torch.float64)
    if antithetic:
        Z, xi = torch.cat([Z, Z]), torch.cat([xi, xi])
        sign = torch.cat([sign, -sign])
        groups = np.concatenate([groups, groups])
    return PopulationDraw(Z.to(device), xi.to(device), sign.to(device), groups, int(seed), antithetic)


def _check_gamma2(gamma2: float) -> None:
    if not (isinstance(gamma2, (int, float)) and math.isfinite(gamma2) and gamma2 > 0):
        raise ValueError(f"γ² must be a finite number > 0, got {gamma2!r}")


# ----------------------------------------------------------------------------------------
# Monte Carlo means over groups
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupMean:
    """A Monte Carlo mean ``value`` ± ``se`` (one standard error, from the i.i.d. group means)
    and ``quad``, a bound on its deterministic part (the mean of the per-row quadrature error
    estimates)."""

    value: float
    se: float
    quad: float
    num_groups: int

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "se": self.se, "quad": self.quad, "groups": self.num_groups}


def group_mean(values: np.ndarray, groups: np.ndarray, quad: np.ndarray | None = None) -> GroupMean:
    """Mean of per-row ``values`` whose rows form i.i.d. groups (``groups`` = group index per
    row); SE = std(group means, ddof=1) / √G."""
    v = np.asarray(values, dtype=np.float64)
    g = np.asarray(groups)
    if v.shape != g.shape:
        raise ValueError(f"values {v.shape} and groups {g.shape} differ in shape")
    G = int(g.max()) + 1
    sums = np.bincount(g, weights=v, minlength=G)
    counts = np.bincount(g, minlength=G)
    if (counts == 0).any():
        raise ValueError("group indices must be 0..G−1 with every group present")
    means = sums / counts
    if G < 2:
        raise ValueError("need at least 2 groups for a standard error")
    q = 0.0 if quad is None else float(np.mean(np.asarray(quad, dtype=np.float64)))
    return GroupMean(float(means.mean()), float(means.std(ddof=1) / math.sqrt(G)), q, G)


# ----------------------------------------------------------------------------------------
# The objectives
# ----------------------------------------------------------------------------------------


@dataclass
class CandidateObjectives:
    """Per-row absolute values (divergent term included) and quadrature errors for one
    candidate at one γ², and their group means L, E, E_full (``None`` when not computed)."""

    name: str
    log_px: np.ndarray | None
    log_px_err: np.ndarray | None
    elbo: np.ndarray | None
    elbo_err: np.ndarray | None
    elbo_full: np.ndarray | None
    elbo_full_err: np.ndarray | None
    n_modes: np.ndarray
    not_converged: int  # rows whose quadrature refinement did not meet its tolerance
    L: GroupMean | None
    E: GroupMean | None
    E_full: GroupMean | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "L": self.L.to_dict() if self.L else None, "E": self.E.to_dict() if self.E else None,
                "E_full": self.E_full.to_dict() if self.E_full else None, "max_modes": int(self.n_modes.max()),
                "not_converged": self.not_converged}


_KEYS = {"L": ("log_px", "log_px_err"), "E": ("elbo", "elbo_err"), "E_full": ("elbo_full", "elbo_full_err")}


@dataclass
class PopulationObjectives:
    """:func:`population_objectives` for one γ²: one record per candidate, the groups of the
    rows, and the index of the reference candidate (θ = 0)."""

    gamma2: float
    candidates: list[CandidateObjectives]
    groups: np.ndarray
    reference: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def _rows(self, key: str, j: int) -> tuple[np.ndarray, np.ndarray]:
        if key not in _KEYS:
            raise KeyError(f"unknown objective {key!r}; known: {', '.join(_KEYS)}")
        c = self.candidates[j]
        v, e = getattr(c, _KEYS[key][0]), getattr(c, _KEYS[key][1])
        if v is None:
            raise ValueError(f"objective {key} was not computed for candidate {c.name}")
        return v, e

    def diff_rows(self, key: str, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-row paired differences value(reference) − value(j) and their quadrature error bounds."""
        v0, e0 = self._rows(key, self.reference)
        vj, ej = self._rows(key, j)
        return v0 - vj, e0 + ej

    def diff(self, key: str, j: int) -> GroupMean:
        """Paired difference of population objectives, e.g. E(0) − E(θ_j), ± paired SE."""
        d, e = self.diff_rows(key, j)
        return group_mean(d, self.groups, e)

    def unpaired_se(self, key: str, j: int) -> float:
        """The SE the same difference would have with independent samples for the two
        candidates: √(SE_ref² + SE_j²)."""
        a = group_mean(self._rows(key, self.reference)[0], self.groups)
        b = group_mean(self._rows(key, j)[0], self.groups)
        return math.hypot(a.se, b.se)

    def restrict(self, rows: np.ndarray) -> "PopulationObjectives":
        """The same objectives on a subset of the rows (integer indices); group means are
        recomputed, so ``rows`` should hold whole groups."""
        rows = np.asarray(rows)
        cands = []
        for c in self.candidates:
            sub = {k: (None if getattr(c, k) is None else getattr(c, k)[rows])
                   for k in ("log_px", "log_px_err", "elbo", "elbo_err", "elbo_full", "elbo_full_err")}
            cands.append(_candidate(c.name, sub, c.n_modes[rows], c.not_converged, self.groups[rows]))
        return PopulationObjectives(self.gamma2, cands, _renumber(self.groups[rows]), self.reference, dict(self.meta))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"gamma2": self.gamma2, "candidates": [c.to_dict() for c in self.candidates], **self.meta}
        diffs = []
        for j in range(len(self.candidates)):
            row: dict[str, Any] = {"name": self.candidates[j].name}
            for key in _KEYS:
                if getattr(self.candidates[j], _KEYS[key][0]) is not None and getattr(self.candidates[self.reference], _KEYS[key][0]) is not None:
                    row[key] = self.diff(key, j).to_dict()
            diffs.append(row)
        out["differences_to_reference"] = diffs
        return out


def _converged(est: Any) -> bool:
    """Whether an estimate's quadrature refinement met its tolerance (the flag is in the
    estimate's ``diagnostics`` or ``info`` dict, or an attribute ``converged``)."""
    for attr in ("diagnostics", "info"):
        d = getattr(est, attr, None)
        if isinstance(d, dict) and "converged" in d:
            return bool(d["converged"])
    return bool(getattr(est, "converged"))


def _renumber(groups: np.ndarray) -> np.ndarray:
    """Group labels mapped onto 0..G−1 (order preserved)."""
    _, inv = np.unique(groups, return_inverse=True)
    return inv.reshape(-1)


def _candidate(name: str, cols: dict[str, np.ndarray | None], n_modes: np.ndarray, not_conv: int, groups: np.ndarray) -> CandidateObjectives:
    g = _renumber(groups)

    def gm(v: str, e: str) -> GroupMean | None:
        return None if cols[v] is None else group_mean(cols[v], g, cols[e])

    return CandidateObjectives(name, cols["log_px"], cols["log_px_err"], cols["elbo"], cols["elbo_err"], cols["elbo_full"],
                               cols["elbo_full_err"], n_modes, not_conv, gm("log_px", "log_px_err"), gm("elbo", "elbo_err"),
                               gm("elbo_full", "elbo_full_err"))


def stack_candidates(parts: Sequence[PopulationObjectives], reference: int = 0) -> PopulationObjectives:
    """Join objectives computed in separate calls (one candidate set per call) on the *same*
    rows and γ² into one record; raises ValueError when γ² or the groups differ."""
    if not parts:
        raise ValueError("nothing to stack")
    g2, groups = parts[0].gamma2, parts[0].groups
    for p in parts[1:]:
        if p.gamma2 != g2 or p.groups.shape != groups.shape or not np.array_equal(p.groups, groups):
            raise ValueError("stack_candidates needs the same γ² and the same row groups in every part")
    cands = [c for p in parts for c in p.candidates]
    if not (0 <= reference < len(cands)):
        raise ValueError(f"reference index {reference} out of range for {len(cands)} candidates")
    return PopulationObjectives(g2, cands, groups, reference)


def population_objectives(
    candidates: Sequence[Model],
    X: Tensor,
    gamma2: float,
    *,
    groups: np.ndarray | None = None,
    z_init: Sequence[Tensor | None] | Tensor | None = None,
    search: bool = True,
    num_random: int = 8,
    log_px: bool = True,
    elbo: bool = True,
    full_cov: bool = False,
    reference: int = 0,
    chunk: int = 256,
    seed: int = 0,
    progress: bool | None = None,
) -> PopulationObjectives:
    """L(θ), E(θ) and optionally E_full(θ) for every candidate on the same data rows ``X``
    (N × n) at precision γ² (see module doc).

    Per row: the posterior modes of each candidate (batched Newton from ``z_init`` — one
    (N, d) tensor per candidate, or one for all, or None — plus, with ``search``, sign flips,
    ``num_random`` prior draws and 0), then log p_γ(x) by Gauss–Hermite with refinement,
    ELBO*(x) (mean-field) and, with ``full_cov``, the full-covariance ELBO*.  Rows are processed
    in chunks of ``chunk`` (memory is bounded by the chunk, not by N).  ``groups`` (default: one
    row per group) defines the Monte Carlo groups for the standard errors.  Raises
    ConvergenceError naming the row and γ² when an optimizer fails.
    """
    _check_gamma2(gamma2)
    if not candidates:
        raise ValueError("need at least one candidate model")
    d, n = candidates[0].d, candidates[0].n
    for m in candidates:
        if (m.d, m.n) != (d, n):
            raise ModelError(f"candidates differ in shape: {candidates[0].name} is {d}→{n}, {m.name} is {m.d}→{m.n}")
    if X.ndim != 2 or X.shape[1] != n:
        raise ModelError(f"data X must have shape (N, n = {n}), got {tuple(X.shape)}")
    if not bool(torch.isfinite(X).all()):
        raise ValueError("data X contain non-finite values")
    if not (0 <= reference < len(candidates)):
        raise ValueError(f"reference index {reference} out of range for {len(candidates)} candidates")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if not (log_px or elbo or full_cov):
        raise ValueError("nothing to compute: log_px, elbo and full_cov are all off")
    N = X.shape[0]
    X = X.to(torch.float64)
    groups = np.arange(N) if groups is None else np.asarray(groups)
    if groups.shape != (N,):
        raise ValueError(f"groups must have one entry per row ({N}), got shape {groups.shape}")
    if isinstance(z_init, Tensor) or z_init is None:
        inits: list[Tensor | None] = [z_init] * len(candidates)
    else:
        inits = list(z_init)
        if len(inits) != len(candidates):
            raise ValueError(f"z_init has {len(inits)} entries for {len(candidates)} candidates")
    for zi in inits:
        if zi is not None and tuple(zi.shape) != (N, d):
            raise ValueError(f"z_init entries must have shape (N, d) = ({N}, {d}), got {tuple(zi.shape)}")
    div = divergent_term(n, d, float(gamma2))
    starts = list(range(0, N, chunk))
    show = (len(candidates) * N > PROGRESS_ITEMS) if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=len(candidates) * len(starts), desc=f"population objectives γ²={gamma2:g}", unit="chunk",
                   file=sys.stderr, leave=False)
    records = []
    try:
        for m, zi in zip(candidates, inits):
            cols: dict[str, list[float]] = {k: [] for k in ("lp", "lpe", "el", "ele", "ef", "efe")}
            modes: list[int] = []
            not_conv = 0
            for s in starts:
                sl = slice(s, min(s + chunk, N))
                Xc = X[sl]
                posts = find_modes(m, Xc, [float(gamma2)] * Xc.shape[0], None if zi is None else zi[sl],
                                   search=search, num_random=num_random, seed=seed)
                modes.extend(pm.count for pm in posts)
                if log_px:
                    for pm in posts:
                        lp = log_marginal_gh(m, pm)
                        cols["lp"].append(lp.value + div)
                        cols["lpe"].append(lp.error)
                        not_conv += int(not _converged(lp))
                if elbo:
                    for st in elbo_star(m, posts):
                        cols["el"].append(st.value + div)
                        cols["ele"].append(st.error)
                        not_conv += int(not _converged(st))
                if full_cov:
                    for est in elbo_star_fullcov(m, posts):
                        cols["ef"].append(est.value + div)
                        cols["efe"].append(est.error)
                if bar is not None:
                    bar.update(1)
            arr = {k: (np.array(v) if v else None) for k, v in cols.items()}
            names = {"log_px": "lp", "log_px_err": "lpe", "elbo": "el", "elbo_err": "ele", "elbo_full": "ef", "elbo_full_err": "efe"}
            records.append(_candidate(m.name, {k: arr[v] for k, v in names.items()}, np.array(modes), not_conv, groups))
    finally:
        if bar is not None:
            bar.close()
    return PopulationObjectives(float(gamma2), records, _renumber(groups), reference)


# ----------------------------------------------------------------------------------------
# The predicted margins: global contrasts C_IMA(f_θ, p0) on common prior draws
# ----------------------------------------------------------------------------------------


def prior_contrasts(candidates: Sequence[Model], num_samples: int, seed: int, chunk: int = 16384) -> np.ndarray:
    """c_IMA(f_θ, u_s) for every candidate at the *same* prior draws u_1..u_S ~ p0 (a seeded
    torch.Generator), shape (K, S): the Monte Carlo summands of C_IMA(f_θ, p0) = E_{u∼p0}
    c_IMA(f_θ, u), paired across candidates so that C_IMA(f_θ) − C_IMA(f_0) has the standard
    error of the per-draw differences (:func:`group_mean` with one draw per group)."""
    from .jacobian import c_ima_from_jacobian, jacobian

    if num_samples < 2:
        raise ValueError(f"need at least 2 prior draws, got {num_samples}")
    if not candidates:
        raise ValueError("need at least one candidate model")
    gen = torch.Generator().manual_seed(int(seed))
    U = candidates[0].prior.sample(num_samples, gen)
    out = np.empty((len(candidates), num_samples))
    for k, m in enumerate(candidates):
        for s in range(0, num_samples, chunk):
            out[k, s:s + chunk] = c_ima_from_jacobian(jacobian(m.decoder, U[s:s + chunk])).cpu().numpy()
    return out
