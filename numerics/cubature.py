"""Smolyak sparse-grid Gauss–Hermite rules for expectations E[h(ξ)] over ξ ~ N(0, I_d).

Construction (the combination technique).  Let U^i be the 1-D probabilists' Gauss–Hermite rule
with m(i) = 2i − 1 nodes (i ≥ 1; exact for polynomials of degree ≤ 4i − 3; every U^i has the
node 0 and no other node in common with another U^j — the nonzero roots of Hermite polynomials of
different odd orders are distinct).  The level-L rule in d dimensions (L ≥ 0) is

    A(L, d) = Σ_{j ∈ N_0^d, L−d+1 ≤ |j| ≤ L} (−1)^{L−|j|} C(d−1, L−|j|) · U^{j_1+1} ⊗ … ⊗ U^{j_d+1},

with identical nodes merged (their weights added).  Because only the node 0 is shared, the merged
rule is built directly: a node is a set S of "active" coordinates (|S| ≤ L), a level j_k ≥ 1 and a
nonzero node of U^{j_k+1} for each k ∈ S (Σ_S j_k ≤ L), and zeros elsewhere.  Its weight is

    Π_{k∈S} w_{j_k+1}(x_k) · Σ_{s=0}^{L−|j_S|} c(|j_S| + s) · [t^s] W0(t)^{d−|S|},

where W0(t) = Σ_{i≥0} w_{i+1}(0) t^i collects the centre weights of the coordinates at 0 and c(q)
is the combination coefficient above.  No node is ever stored twice, so the construction is
linear in the number of nodes; weights may be negative and sum to 1.

Exactness (tested).  Δ^i = U^i − U^{i−1} annihilates the polynomials U^{i−1} integrates exactly,
so A(L, d) is exact on Σ_{|j| = L} P_{4j_1+1} ⊗ … ⊗ P_{4j_d+1} (Novak–Ritter), and, every rule
being symmetric, on every monomial with an odd exponent.  A monomial ξ^α with all α_k even is
integrated exactly when Σ_k ⌈α_k/4⌉ ≤ L; since ⌈α_k/4⌉ ≤ α_k/2, the rule is exact for all
polynomials of **total degree ≤ 2L + 1** (and for pure powers ξ_k^α up to degree 4L + 1).

Size.  rule_size(d, L) = Σ_{s≤L} C(d, s) · [t^{≤L}] (Σ_{j≥1} 2j t^j)^s, e.g. d = 10: 21, 221, 1581,
12981, 71785 nodes at L = 1…5; d = 30: 61, 1861, 41541, 692541 at L = 1…4.  The rule is a
sparse grid, not a fully symmetric rule; it is symmetric under coordinate permutations and
sign changes.

Large rules are never materialized by the estimators: :func:`iter_rule` yields dense chunks of at
most ``chunk`` nodes built on the fly from the compact representation (:func:`rule_blocks`).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import numpy as np
import torch

from .quadrature import _hermite_1d

Tensor = torch.Tensor

__all__ = ["sparse_rule", "rule_size", "iter_rule", "abs_weight_sum", "rule_blocks", "total_degree", "RuleBlock", "MAX_LEVEL"]

#: Highest level offered: U^{MAX_LEVEL+1} has 2·MAX_LEVEL + 1 nodes (numpy's hermegauss is accurate
#: far beyond that), and rules beyond it are too large to be useful in d ≥ 3 anyway.
MAX_LEVEL = 20


def _check(d: int, level: int) -> None:
    if not (isinstance(d, (int, np.integer)) and d >= 1):
        raise ValueError(f"sparse rule: d must be an integer >= 1, got {d!r}")
    if not (isinstance(level, (int, np.integer)) and 0 <= level <= MAX_LEVEL):
        raise ValueError(f"sparse rule: level must be an integer in [0, {MAX_LEVEL}], got {level!r}")


def total_degree(level: int) -> int:
    """Total polynomial degree integrated exactly by the level-``level`` rule: 2L + 1."""
    return 2 * level + 1


@functools.lru_cache(maxsize=None)
def _rule_1d(i: int) -> tuple[np.ndarray, np.ndarray]:
    """U^i: 2i − 1 probabilists' Gauss–Hermite nodes and weights summing to 1; the middle node
    is set to exactly 0 (hermegauss returns it to rounding)."""
    m = 2 * i - 1
    x, w = _hermite_1d(m)
    x = x.copy()
    x[m // 2] = 0.0
    x = 0.5 * (x - x[::-1])  # exactly symmetric
    w = 0.5 * (w + w[::-1])
    x.flags.writeable = False
    w.flags.writeable = False
    return x, w


def _nonzero_1d(j: int) -> tuple[np.ndarray, np.ndarray]:
    """The 2j nonzero nodes (and their weights) of U^{j+1}, j ≥ 1."""
    x, w = _rule_1d(j + 1)
    keep = x != 0.0
    return x[keep], w[keep]


def _coef(d: int, level: int, q: int) -> int:
    """Combination coefficient of the tensor rules with |j| = q."""
    r = level - q
    if r < 0 or r > d - 1:
        return 0
    return (-1) ** r * math.comb(d - 1, r)


@functools.lru_cache(maxsize=None)
def _zero_factor(d: int, level: int) -> np.ndarray:
    """G[z, q] = Σ_s c(q + s) [t^s] W0(t)^z for z zero coordinates and an active level sum q:
    the weight factor contributed by the coordinates at 0 (see module doc).  The combination
    coefficients reach C(d−1, ⌊(d−1)/2⌋) with alternating signs, so the sum cancels heavily: it
    is done in exact rational arithmetic on the float64 centre weights and rounded once."""
    w0 = [Fraction(float(_rule_1d(i + 1)[1][i])) for i in range(level + 1)]  # centre weight of U^{i+1}
    G = np.zeros((d + 1, level + 1))
    poly = [Fraction(0)] * (level + 1)
    poly[0] = Fraction(1)  # W0^0
    for z in range(d + 1):
        for q in range(level + 1):
            G[z, q] = float(sum((_coef(d, level, q + s) * poly[s] for s in range(level + 1 - q)), Fraction(0)))
        poly = [sum((poly[a] * w0[r - a] for a in range(r + 1)), Fraction(0)) for r in range(level + 1)]
    return G


@dataclass(frozen=True)
class RuleBlock:
    """All nodes with one active pattern: ``coords`` (C, s) sorted active coordinates (one row per
    coordinate set S), ``values`` (P, s) and ``weights`` (P,) the nonzero node values and weights
    on those coordinates (the same for every row of ``coords``).  The block has C·P nodes."""

    coords: np.ndarray
    values: np.ndarray
    weights: np.ndarray

    @property
    def size(self) -> int:
        return int(self.coords.shape[0] * self.values.shape[0])


def _compositions(s: int, budget: int) -> Iterator[tuple[int, ...]]:
    """Level vectors (j_1, …, j_s), j_k ≥ 1, Σ j_k ≤ budget."""
    if s == 0:
        yield ()
        return
    for first in range(1, budget - (s - 1) + 1):
        for rest in _compositions(s - 1, budget - first):
            yield (first, *rest)


@functools.lru_cache(maxsize=16)
def rule_blocks(d: int, level: int) -> tuple[RuleBlock, ...]:
    """The compact representation of A(level, d): one :class:`RuleBlock` per (|S|, level vector)."""
    _check(d, level)
    G = _zero_factor(d, level)
    out = []
    for s in range(0, min(level, d) + 1):
        combos = np.array(list(itertools.combinations(range(d), s)), dtype=np.int64).reshape(math.comb(d, s), s)
        combos.flags.writeable = False
        for js in _compositions(s, level):
            q = sum(js)
            g = G[d - s, q]
            if g == 0.0:
                continue
            parts = [_nonzero_1d(j) for j in js]
            if s:
                vals = np.array(list(itertools.product(*[p[0] for p in parts])), dtype=np.float64).reshape(-1, s)
                wts = np.prod(np.array(list(itertools.product(*[p[1] for p in parts])), dtype=np.float64), axis=1)
            else:
                vals = np.zeros((1, 0))
                wts = np.ones(1)
            wts = g * wts
            vals.flags.writeable = False
            wts.flags.writeable = False
            out.append(RuleBlock(combos, vals, wts))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def rule_size(d: int, level: int) -> int:
    """Number of nodes of A(level, d), without building it:
    Σ_{s≤L} C(d, s) · Σ_{r≤L} [t^r] (Σ_{j≥1} 2j t^j)^s (for s = d only r ≥ L − d + 1)."""
    _check(d, level)
    h = np.array([0] + [2 * j for j in range(1, level + 1)], dtype=object)
    poly = np.zeros(level + 1, dtype=object)
    poly[0] = 1
    total = 0
    for s in range(0, min(level, d) + 1):
        # with every coordinate active (s = d) only |j| ≥ L − d + 1 has a nonzero coefficient
        lo = max(0, level - d + 1) if s == d else 0
        total += math.comb(d, s) * int(sum(poly[lo:]))
        poly = np.convolve(poly, h)[: level + 1]
    return int(total)


@functools.lru_cache(maxsize=None)
def abs_weight_sum(d: int, level: int) -> float:
    """Σ_i |w_i| of A(level, d) (≥ 1; the amplification of per-node errors by the signed sum),
    from the compact representation without building the nodes."""
    return math.fsum(blk.coords.shape[0] * float(np.abs(blk.weights).sum()) for blk in rule_blocks(d, level))


def iter_rule(d: int, level: int, chunk: int, dtype: torch.dtype = torch.float64,
              device: str | torch.device = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
    """The nodes (c, d) and weights (c,) of A(level, d) as torch tensors, in chunks of at most
    ``chunk`` nodes (c ≤ chunk), built on the fly: peak memory O(chunk · d) whatever the rule size.
    The order of the nodes is fixed (deterministic)."""
    if chunk < 1:
        raise ValueError("iter_rule: chunk must be >= 1")
    for blk in rule_blocks(d, level):
        C, s = blk.coords.shape
        P = blk.values.shape[0]
        vals = torch.tensor(blk.values, dtype=dtype, device=device)
        wts = torch.tensor(blk.weights, dtype=dtype, device=device)
        rows = max(1, chunk // P)
        if P > chunk:  # one coordinate set already has more nodes than a chunk: split its node list
            for c in range(C):
                cols = torch.tensor(blk.coords[c], device=device)
                for p0 in range(0, P, chunk):
                    v = vals[p0 : p0 + chunk]
                    nodes = torch.zeros(v.shape[0], d, dtype=dtype, device=device)
                    nodes[:, cols] = v
                    yield nodes, wts[p0 : p0 + chunk].clone()
            continue
        for c0 in range(0, C, rows):
            cc = torch.tensor(blk.coords[c0 : c0 + rows], device=device)  # (r, s)
            r = cc.shape[0]
            nodes = torch.zeros(r, P, d, dtype=dtype, device=device)
            if s:
                idx = cc[:, None, :].expand(r, P, s)
                nodes.scatter_(2, idx, vals[None].expand(r, P, s))
            yield nodes.reshape(r * P, d), wts.repeat(r)


def sparse_rule(d: int, level: int, as_torch: bool = False, max_nodes: int = 5_000_000
                ) -> tuple[np.ndarray, np.ndarray] | tuple[Tensor, Tensor]:
    """The level-``level`` Smolyak Gauss–Hermite rule for N(0, I_d), materialized: nodes (N, d)
    and weights (N,) (float64 numpy arrays, read-only and cached; torch tensors with
    ``as_torch``).  Exact for total degree ≤ 2·level + 1 (module doc); weights sum to 1 and
    may be negative.  Refuses (ValueError) rules of more than ``max_nodes`` nodes: use
    :func:`iter_rule` for those."""
    _check(d, level)
    N = rule_size(d, level)
    if N > max_nodes:
        raise ValueError(f"sparse rule d = {d}, level {level} has {N} nodes (> {max_nodes}); iterate it in chunks "
                         "with iter_rule")
    nodes, weights = _materialize(d, level)
    if as_torch:
        return torch.as_tensor(nodes.copy()), torch.as_tensor(weights.copy())
    return nodes, weights


@functools.lru_cache(maxsize=8)
def _materialize(d: int, level: int) -> tuple[np.ndarray, np.ndarray]:
    parts = list(iter_rule(d, level, chunk=1 << 16))
    nodes = torch.cat([p[0] for p in parts]).numpy()
    weights = torch.cat([p[1] for p in parts]).numpy()
    nodes.flags.writeable = False
    weights.flags.writeable = False
    return nodes, weights
