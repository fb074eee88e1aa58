"""numerics.cubature: the Smolyak sparse-grid Gauss–Hermite rules for N(0, I_d) integrate every
polynomial of total degree ≤ 2L + 1 exactly (and not one of degree 2L + 2 in general), their
weights sum to 1, no node is stored twice, the chunked iteration is the same rule, and the
node count is known without building the rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from numerics.cubature import MAX_LEVEL, abs_weight_sum, iter_rule, rule_blocks, rule_size, sparse_rule, total_degree


def _gauss_moment(alpha) -> float:
    """E[Π ξ_k^α_k] for ξ ~ N(0, I): Π (α_k − 1)!! for even α_k, 0 if any α_k is odd."""
    out = 1.0
    for a in alpha:
        if a % 2:
            return 0.0
        out *= math.prod(range(a - 1, 0, -2))
    return out


def _monomials(d: int, max_deg: int):
    """All exponent vectors of total degree ≤ max_deg in d variables (as an (M, d) array)."""
    out = []

    def rec(prefix, left, k):
        if k == d:
            out.append(prefix)
            return
        for a in range(left + 1):
            rec(prefix + [a], left - a, k + 1)

    rec([], max_deg, 0)
    return np.array(out, dtype=np.int64)


def _integrate(nodes: np.ndarray, weights: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    vals = np.prod(nodes[None, :, :] ** alphas[:, None, :], axis=-1)  # (M, N)
    return vals @ weights


@pytest.mark.parametrize("d,level", [(1, 6), (2, 5), (3, 4), (4, 3), (6, 2), (10, 2)])
def test_exact_for_total_degree(d: int, level: int) -> None:
    """Every monomial of total degree ≤ 2L + 1 is integrated to rounding (relative to the
    size of the weighted terms, Σ|w_i ξ_i^α|)."""
    nodes, weights = sparse_rule(d, level)
    alphas = _monomials(d, total_degree(level))
    got = _integrate(nodes, weights, alphas)
    scale = np.abs(np.prod(nodes[None, :, :] ** alphas[:, None, :], axis=-1)) @ np.abs(weights)
    exact = np.array([_gauss_moment(a) for a in alphas])
    assert np.all(np.abs(got - exact) <= 1e-13 * np.maximum(1.0, scale)), np.max(np.abs(got - exact))


@pytest.mark.parametrize("d,level", [(3, 2), (4, 3), (6, 2)])
def test_degree_is_sharp(d: int, level: int) -> None:
    """Π_{k ≤ L+1} ξ_k² has total degree 2L + 2 and is NOT integrated exactly: the stated degree
    is the true one (so the exactness test above can fail)."""
    nodes, weights = sparse_rule(d, level)
    alpha = np.array([2] * (level + 1) + [0] * (d - level - 1))
    assert abs(_integrate(nodes, weights, alpha[None])[0] - 1.0) > 1e-3


@pytest.mark.parametrize("level", [1, 3, 5])
def test_pure_powers_to_degree_4L_plus_1(level: int) -> None:
    """Along one axis the rule contains the (2L+1)-point Gauss–Hermite rule: ξ_1^α exact to
    α = 4L + 1, not at α = 4L + 2."""
    nodes, weights = sparse_rule(3, level)
    for a in range(4 * level + 3):
        alpha = np.array([[a, 0, 0]])
        err = abs(_integrate(nodes, weights, alpha)[0] - _gauss_moment(alpha[0]))
        scale = float(np.abs(nodes[:, 0] ** a) @ np.abs(weights))
        if a <= 4 * level + 1:
            assert err <= 1e-13 * max(1.0, scale)
        else:
            assert err > 1e-6 * _gauss_moment(alpha[0])


@pytest.mark.parametrize("d,level", [(1, 4), (2, 7), (3, 5), (5, 4), (10, 3), (30, 2)])
def test_weights_sum_to_one_and_nodes_distinct(d: int, level: int) -> None:
    nodes, weights = sparse_rule(d, level)
    assert nodes.shape == (rule_size(d, level), d) and weights.shape == (rule_size(d, level),)
    assert abs(math.fsum(weights) - 1.0) <= 1e-13 * max(1.0, float(np.abs(weights).sum()))
    assert abs_weight_sum(d, level) == pytest.approx(math.fsum(np.abs(weights)), rel=1e-14)
    assert np.unique(np.round(nodes, 10), axis=0).shape[0] == nodes.shape[0]
    # symmetric under a coordinate permutation and a sign change (as a set of weighted nodes)
    perm = np.roll(np.arange(d), 1)
    flipped = nodes[:, perm] * np.where(np.arange(d) == 0, -1.0, 1.0)
    key = lambda X, W: sorted(zip(map(tuple, np.round(X, 10)), np.round(W, 10)))  # noqa: E731
    assert key(flipped, weights) == key(nodes, weights)


def test_rule_size_without_construction() -> None:
    """Known sizes (d = 10: 21, 241, 1981, 12981, 71785; d = 30 up to level 5) from the counting
    formula, and equal to the built rule where it is built."""
    assert [rule_size(10, L) for L in range(6)] == [1, 21, 241, 1981, 12981, 71785]
    assert [rule_size(30, L) for L in range(6)] == [1, 61, 1921, 41541, 692541, 9477753]
    assert rule_size(1, 5) == 11  # in 1-D the rule is the 11-point Gauss–Hermite rule
    for d, L in [(2, 9), (7, 3), (30, 3)]:
        assert sum(blk.size for blk in rule_blocks(d, L)) == rule_size(d, L)


@pytest.mark.parametrize("chunk", [1, 7, 100, 1 << 16])
def test_iter_rule_is_the_same_rule_in_chunks(chunk: int) -> None:
    nodes, weights = sparse_rule(5, 3)
    parts = list(iter_rule(5, 3, chunk))
    assert all(p[0].shape[0] <= chunk for p in parts)
    X = torch.cat([p[0] for p in parts]).numpy()
    W = torch.cat([p[1] for p in parts]).numpy()
    assert np.array_equal(X, nodes) and np.array_equal(W, weights)


def test_d30_level4_iterates_quickly_and_exactly() -> None:
    """The d = 30, level-4 rule (692 541 nodes) is streamed in chunks: its weights sum to 1 and it
    integrates ξ_1² ξ_7² ξ_30⁴ (degree 8 ≤ 9) exactly, without ever being materialized."""
    total, mom, count = [], [], 0
    for X, W in iter_rule(30, 4, 1 << 15):
        count += X.shape[0]
        total.append(W.sum().item())
        mom.append((W * X[:, 0] ** 2 * X[:, 6] ** 2 * X[:, 29] ** 4).sum().item())
    assert count == rule_size(30, 4)
    assert abs(math.fsum(total) - 1.0) < 1e-10
    assert abs(math.fsum(mom) - 3.0) < 1e-9


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="level"):
        sparse_rule(3, -1)
    with pytest.raises(ValueError, match="level"):
        rule_size(3, MAX_LEVEL + 1)
    with pytest.raises(ValueError, match="d must be"):
        sparse_rule(0, 2)
    with pytest.raises(ValueError, match="iter_rule"):
        sparse_rule(30, 5)  # 9.5 million nodes: refused, to be streamed instead
    with pytest.raises(ValueError, match="chunk"):
        next(iter_rule(3, 2, 0))


def test_as_torch_and_cache() -> None:
    X, W = sparse_rule(4, 2, as_torch=True)
    assert X.dtype == torch.float64 and W.dtype == torch.float64
    X[0, 0] = 123.0  # a copy: the cached rule is untouched
    assert sparse_rule(4, 2)[0][0, 0] == 0.0
    assert sparse_rule(4, 2)[0] is sparse_rule(4, 2)[0]  # cached
    with pytest.raises(ValueError):
        sparse_rule(4, 2)[0][0, 0] = 1.0  # read-only
