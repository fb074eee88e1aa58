"""Tensor-product Gauss–Hermite rules for expectations under N(0, I_d)."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch

Tensor = torch.Tensor


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


def refinement_levels(d: int, k_start: int | None = None, max_nodes: int = 2**20) -> list[int]:
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
