"""Tensor-product Gauss–Hermite rules for expectations under N(0, I_d), whole or in chunks, and
the memory budget that every node sum of the estimators is processed within.

Memory bounded by design: an estimator never materializes an array of (nodes × items)
without checking it against a byte budget ``max_memory`` (default :data:`DEFAULT_MAX_MEMORY`):
rules are generated chunk by chunk (:class:`TensorRule`), node sums (values, gradients,
Hessians, log-sum-exps) are accumulated over chunks sized by a measured cost per node
(:func:`numerics.optimize.allocation_probe`), and a request that cannot fit raises
:class:`MemoryBudgetError`."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch

from .memsize import format_bytes, parse_memory  # noqa: F401 (re-exported: numerics.quadrature is where callers find them)
from .models import ModelError

Tensor = torch.Tensor

#: Default byte budget of the working memory of one estimator call (node chunks × items):
#: 1 GiB, so that a whole evaluation stays well under 2 GB resident.
DEFAULT_MAX_MEMORY = 1 << 30
#: Largest tensor rule (nodes per item) a refinement uses: a time limit, not a memory one (node
#: sums are chunked).  At d = 3 it allows 64³ nodes (ELBO* Newton: ~1 s per item and iteration).
MAX_TENSOR_NODES = 2**20


class MemoryBudgetError(ModelError):
    """A computation cannot be done within the memory (or node-count) budget; the message names
    the budget, what was needed and a method that would fit."""


@functools.lru_cache(maxsize=64)
def _hermite_1d(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and normalized weights (summing to 1) of the k-point probabilists' rule:
    E[h(ξ)] ≈ Σ_i w_i h(ξ_i), ξ ~ N(0, 1), exact for polynomials of degree ≤ 2k − 1."""
    x, w = np.polynomial.hermite_e.hermegauss(k)
    return x, w / w.sum()


@functools.lru_cache(maxsize=64)
def _tensor_rule_np(k: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = _hermite_1d(k)
    nodes = np.array(list(itertools.product(x, repeat=d)), dtype=np.float64).reshape(-1, d)
    logw = np.array([sum(c) for c in itertools.product(np.log(w), repeat=d)], dtype=np.float64)
    return nodes, logw


def gauss_hermite(k: int, d: int, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """Tensor rule with k^d nodes for N(0, I_d): returns (nodes (k^d, d), log-weights (k^d,)),
    the weights summing to one."""
    if k < 1 or d < 1:
        raise ValueError("gauss_hermite needs k >= 1 and d >= 1")
    if d <= 3 or k ** d <= 50_000:
        nodes, logw = _tensor_rule_np(k, d)
        return torch.as_tensor(nodes, dtype=dtype, device=device), torch.as_tensor(logw, dtype=dtype, device=device)
    x, w = _hermite_1d(k)  # build large grids with meshgrid instead of itertools
    xt = torch.as_tensor(x, dtype=dtype, device=device)
    lw = torch.as_tensor(np.log(w), dtype=dtype, device=device)
    grids = torch.meshgrid(*([xt] * d), indexing="ij")
    lgrids = torch.meshgrid(*([lw] * d), indexing="ij")
    nodes = torch.stack([g.reshape(-1) for g in grids], -1)
    logw = sum(g.reshape(-1) for g in lgrids)
    return nodes, logw


class TensorRule:
    """The k^d-node tensor Gauss–Hermite rule for N(0, I_d), available whole (:meth:`whole`, the
    arrays of :func:`gauss_hermite`) or as chunks of consecutive nodes (:meth:`chunk`, generated
    from the node indices without building the whole grid; same nodes and order, log-weights
    equal to rounding)."""

    def __init__(self, k: int, d: int, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> None:
        if k < 1 or d < 1:
            raise ValueError("TensorRule needs k >= 1 and d >= 1")
        self.k, self.d, self.dtype, self.device = k, d, dtype, device
        self.size = k**d
        x, w = _hermite_1d(k)
        self._x = torch.as_tensor(x, dtype=dtype, device=device)
        self._lw = torch.as_tensor(np.log(w), dtype=dtype, device=device)

    def whole(self) -> tuple[Tensor, Tensor]:
        """All nodes (k^d, d) and log-weights (k^d,) (:func:`gauss_hermite`)."""
        return gauss_hermite(self.k, self.d, self.dtype, self.device)

    def chunk(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Nodes ``start`` … ``stop − 1`` (row-major order, last coordinate fastest)."""
        idx = torch.arange(start, min(stop, self.size), dtype=torch.long, device=self.device)
        digits = []
        for _ in range(self.d):
            digits.append(idx % self.k)
            idx = idx // self.k
        digits = torch.stack(digits[::-1], -1)  # (c, d), most significant first
        return self._x[digits], self._lw[digits].sum(-1)


def refinement_levels(d: int, k_start: int | None = None, max_nodes: int = MAX_TENSOR_NODES) -> list[int]:
    """Node counts per dimension for a refinement sweep: doubling from k_start while the
    tensor rule stays within ``max_nodes`` nodes (at least two levels)."""
    if k_start is None:
        k_start = {1: 16, 2: 12, 3: 8}.get(d, 4)
    levels = [k_start]
    while (2 * levels[-1]) ** d <= max_nodes and 2 * levels[-1] <= 160:
        levels.append(2 * levels[-1])
    if len(levels) < 2:
        levels.append(levels[0] + 2)
    return levels


UNIT_ROUNDOFF = float(np.finfo(np.float64).eps) / 2
LOG_2PI = math.log(2 * math.pi)
