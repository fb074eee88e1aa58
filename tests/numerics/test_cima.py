"""docs/theory.md C3 (Hadamard) and C4 (invariances) for the IMA contrast, and the N2 negative control.

c_IMA(J) = Σ_k log‖J_k‖ − ½ log det(JᵀJ), computed by numerics.jacobian.c_ima_from_jacobian
via QR.  Tolerances: every test matrix has a bounded condition number κ(J); a backward-stable
QR gives |R_kk| and ‖J_k‖ to relative accuracy ~n·u, but log|R_kk| can lose up to κ·n·u, so
two evaluations of c_IMA that should be equal agree to ``_tol(J)`` = 64·d·n·κ(J)·u.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from numerics.jacobian import c_ima, c_ima_batch_mean_jacobian, c_ima_from_jacobian, global_c_ima, jacobian
from numerics.models import (
    CallableDecoder,
    GaussianPrior1D,
    IMADecoder,
    LinearDecoder,
    LogisticPrior1D,
    MLPDecoder,
    Model,
    Prior,
    TriangularDecoder,
)
from numerics.quadrature import UNIT_ROUNDOFF

SETTINGS = dict(max_examples=60, deadline=None, derandomize=True, database=None)


@st.composite
def shapes(draw):
    d = draw(st.integers(1, 5))
    n = draw(st.integers(d, d + 3))
    return n, d


@st.composite
def matrices(draw, max_cond: float = 1e4):
    """A random n×d matrix (n ≥ d, d ≤ 5) with condition number ≤ max_cond."""
    n, d = draw(shapes())
    J = draw(arrays(np.float64, (n, d), elements=st.floats(-3, 3, allow_nan=False, allow_subnormal=False)))
    s = np.linalg.svd(J, compute_uv=False)
    assume(s[-1] > 1e-3 and s[0] / s[-1] <= max_cond)
    return J


def _c(J: np.ndarray) -> float:
    return float(c_ima_from_jacobian(torch.as_tensor(J, dtype=torch.float64)))


def _tol(J: np.ndarray) -> float:
    n, d = J.shape
    return 64 * d * n * np.linalg.cond(J) * UNIT_ROUNDOFF


def _orthogonal(n: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return q * np.sign(np.diag(r))


# ----------------------------------------------------------------------------------------
# C3: Hadamard
# ----------------------------------------------------------------------------------------


@settings(**SETTINGS)
@given(matrices())
def test_hadamard_nonnegative_with_quantitative_gap(J):
    """c_IMA ≥ 0, and strictly positive when two columns are not orthogonal: with the
    normalized Gram matrix G (unit diagonal), Fischer's inequality gives
    det G ≤ 1 − c² for any off-diagonal entry c, so c_IMA = −½ log det G ≥ −½ log(1 − c_max²)."""
    c = _c(J)
    assert c >= -_tol(J)
    norms = np.linalg.norm(J, axis=0)
    G = (J.T @ J) / np.outer(norms, norms)
    cmax = np.max(np.abs(G - np.eye(J.shape[1]))) if J.shape[1] > 1 else 0.0
    assert c >= -0.5 * math.log1p(-min(cmax**2, 1 - 1e-16)) - _tol(J)


@settings(**SETTINGS)
@given(shapes(), st.integers(0, 2**31 - 1), st.lists(st.floats(0.1, 10.0), min_size=5, max_size=5))
def test_hadamard_equality_for_orthogonal_columns(nd, seed, scales):
    """Columns Q·diag(λ) with Q orthonormal: c_IMA = 0 up to rounding (κ = max λ / min λ)."""
    n, d = nd
    Q = _orthogonal(n, seed)[:, :d]
    J = Q * np.asarray(scales[:d])
    assert abs(_c(J)) <= _tol(J)


def test_hadamard_equality_only_for_orthogonal_columns():
    """'iff': a one-parameter family J(θ) = [e1, cos θ e1 + sin θ e2] has c_IMA = −log|sin θ|,
    zero only at θ = π/2."""
    for theta in np.linspace(0.2, math.pi / 2, 9):
        J = np.array([[1.0, math.cos(theta)], [0.0, math.sin(theta)], [0.0, 0.0]])
        assert abs(_c(J) + math.log(math.sin(theta))) <= _tol(J)
        assert (_c(J) > 1e-12) == (abs(theta - math.pi / 2) > 1e-6)


# ----------------------------------------------------------------------------------------
# C4: invariances
# ----------------------------------------------------------------------------------------


@settings(**SETTINGS)
@given(matrices(max_cond=1e3), st.data())
def test_invariances(J, data):
    """c_IMA(JD) = c_IMA(JP) = c_IMA(OJ) = c_IMA(J) for a nonsingular diagonal D (any signs),
    a permutation P and an orthogonal n×n O.  The tolerance uses the worse conditioned of the
    two matrices (κ(JD) ≤ κ(J)·max|D|/min|D|)."""
    n, d = J.shape
    c = _c(J)
    D = np.array(data.draw(st.lists(st.floats(0.05, 20.0), min_size=d, max_size=d)))
    D = D * np.array(data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=d, max_size=d)))
    perm = data.draw(st.permutations(list(range(d))))
    O = _orthogonal(n, data.draw(st.integers(0, 2**31 - 1)))
    for name, J2 in [("JD", J * D), ("JP", J[:, perm]), ("OJ", O @ J)]:
        tol = max(_tol(J), _tol(J2))
        assert abs(_c(J2) - c) <= tol, f"{name}: {_c(J2)!r} vs {c!r}"


class _Elementwise:
    """h_k(z) = a_k z + b_k tanh(z) + c_k z³/3 (strictly increasing for a_k > |b_k|, c_k ≥ 0)."""

    def __init__(self, a, b, c):
        self.a, self.b, self.c = (torch.as_tensor(v, dtype=torch.float64) for v in (a, b, c))

    def __call__(self, z):
        return self.a * z + self.b * torch.tanh(z) + self.c * z**3 / 3


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 4), st.integers(0, 2), st.integers(0, 1000), st.data())
def test_elementwise_reparametrization(d, extra, seed, data):
    """c_IMA(f∘h, z) = c_IMA(f, h(z)) for h elementwise: J_{f∘h}(z) = J_f(h(z))·diag(h'(z)),
    a column scaling (C4).  Decoders from numerics.models (MLP, triangular, IMA class)."""
    n = d + extra
    kind = data.draw(st.sampled_from(["mlp", "triangular_mlp", "triangular", "ima"]))
    if kind == "mlp":
        f = MLPDecoder(d, n, seed=seed)
    elif kind == "triangular_mlp":
        f = MLPDecoder(d, seed=seed, triangular=True)
    elif kind == "triangular":
        f = TriangularDecoder(d, seed=seed)
    else:
        f = IMADecoder(d, n, seed=seed)
    a = np.array(data.draw(st.lists(st.floats(0.5, 2.0), min_size=d, max_size=d)))
    b = np.array(data.draw(st.lists(st.floats(-0.45, 0.45), min_size=d, max_size=d))) * a
    c = np.array(data.draw(st.lists(st.floats(0.0, 0.5), min_size=d, max_size=d)))
    h = _Elementwise(a, b, c)
    fh = CallableDecoder(lambda z: f(h(z)), d, f.n, name="f∘h")
    z = torch.as_tensor(np.random.default_rng(seed).uniform(-2, 2, size=(16, d)), dtype=torch.float64)
    lhs = c_ima(fh, z)
    rhs = c_ima(f, h(z))
    J = jacobian(fh, z).numpy()
    tol = max(_tol(Ji) for Ji in J)
    assert torch.all((lhs - rhs).abs() <= tol), (lhs - rhs).abs().max()
    if kind == "ima":  # IMA class: both vanish (C12 at the level of the contrast)
        assert torch.all(lhs.abs() <= tol)


# ----------------------------------------------------------------------------------------
# N2: wrong contrasts are rejected
# ----------------------------------------------------------------------------------------


def test_batch_mean_jacobian_contrast_differs_for_nonlinear_decoder():
    """N2: c_IMA of the batch-mean Jacobian (the paper's code) is not E_z c_IMA(f, z) for a
    nonlinear decoder.  For the README's f(z) = (z1 + 0.4 z2², z2), J = [[1, 0.8 z2], [0, 1]]:
    under a symmetric prior E[J] = I, so the batch-mean contrast tends to 0 (it is O(1/N) for
    a batch of N), while C_IMA = E[½ log(1 + 0.64 z2²)] ≈ 0.3 > 0: the two differ by far more
    than 20 Monte Carlo standard errors.  For a linear decoder both coincide (to rounding)."""
    fn = lambda z: torch.stack([z[..., 0] + 0.4 * z[..., 1] ** 2, z[..., 1]], -1)  # noqa: E731
    model = Model(CallableDecoder(fn, 2, 2, name="triangular"), Prior.iid(LogisticPrior1D(), 2))
    est = global_c_ima(model, num_samples=4096, seed=0)
    z = model.prior.sample(4096, torch.Generator().manual_seed(0))
    wrong = float(c_ima_batch_mean_jacobian(model.decoder, z))
    assert wrong < 0.01  # O(1/N): E[J] = I in the limit
    assert est.value - wrong > 20 * est.error, (wrong, est.value, est.error)
    # the pointwise mean on the same batch is the global estimate (same seed, same samples)
    assert abs(float(c_ima(model.decoder, z).mean()) - est.value) <= 1e-13
    lin = LinearDecoder(np.array([[1.0, 0.5], [0.2, 1.0], [0.3, -0.7]]))
    zl = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert abs(float(c_ima_batch_mean_jacobian(lin, zl)) - float(c_ima(lin, zl).mean())) <= 1e-13


def test_missing_half_is_rejected_by_the_closed_form_gap():
    """N2: for n > d the contrast without the ½ (Σ log‖J_k‖ − log det JᵀJ) disagrees with the
    linear-Gaussian gap at γ² = 1e10 (closed form, C5: gap = c_IMA + O(ε) with the
    first-order coefficient ½(Σ 1/M_kk − tr M⁻¹) ≈ 1), while the correct c_IMA agrees."""
    A = np.array([[1.0, 0.5], [0.2, 1.0], [0.3, -0.7]])
    M = A.T @ A
    eps = 1e-10
    Lam = np.eye(2) + M / eps
    gap = 0.5 * (np.sum(np.log(np.diag(Lam))) - np.linalg.slogdet(Lam)[1])
    right = _c(A)
    wrong = float(np.sum(np.log(np.linalg.norm(A, axis=0))) - np.linalg.slogdet(M)[1])
    # the O(ε) remainder is ≤ 1e-9 here; float64 slogdet of Λ (κ ≈ 3) adds ~1e-15·log‖Λ‖
    assert abs(gap - right) <= 1e-8
    assert abs(gap - wrong) > 1e-2


@pytest.mark.parametrize("prior", [GaussianPrior1D(), LogisticPrior1D()], ids=["gaussian", "logistic"])
def test_global_contrast_is_zero_for_ima_class(prior):
    """C_IMA of an IMA-class decoder is exactly zero (every sample is zero to rounding)."""
    model = Model(IMADecoder(3, 5, seed=2), Prior.iid(prior, 3))
    est = global_c_ima(model, num_samples=512, seed=1)
    assert abs(est.value) <= 1e-13 and est.error <= 1e-13
