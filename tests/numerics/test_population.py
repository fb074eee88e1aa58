"""numerics.population: population objectives L(θ) = E_x log p_γ(x; f_θ), E(θ) = E_x ELBO*(x; f_θ)
over x ~ p_γ(x; f) with paired Monte Carlo (claim C17).

Linear–Gaussian closed form (claim C5), f(z) = A z, p0 = N(0, I), candidates A R_θ:

    p_γ(x; A R_θ) = N(x; 0, Σ),  Σ = A Aᵀ + γ⁻² I_n   (the same for every θ: R_θ R_θᵀ = I),
    ELBO*(x; A R_θ) = log p_γ(x) − gap_θ,  gap_θ = ½(Σ_k log Λ_kk − log det Λ),  Λ = I + γ² R_θᵀAᵀA R_θ,

so E(0) − E(θ) = gap_θ − gap_0 for *every* x, and E_x log p_γ(x) = −½(n log 2π + log det Σ + n).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from numerics.models import GaussianPrior1D, LinearDecoder, Model, ModelError, Prior
from numerics.population import (
    draw_population,
    group_mean,
    population_objectives,
    prior_contrasts,
    rotated_model,
    rotation_matrix,
    stack_candidates,
)

A = np.array([[1.0, 0.5], [0.2, 1.3]])


def _linear() -> Model:
    return Model(LinearDecoder(A), Prior.iid(GaussianPrior1D(), 2), name="linear")


def _ima() -> Model:
    """f = O·h(z), h_k(t) = t + t³/10 (the built-in "ima" model, IMA class, not conformal)."""
    from numerics.models import CallableDecoder

    def f(z: torch.Tensor) -> torch.Tensor:
        h = z + z**3 / 10
        return torch.stack([0.6 * h[..., 0] - 0.8 * h[..., 1], 0.8 * h[..., 0] + 0.6 * h[..., 1]], -1)

    return Model(CallableDecoder(f, 2, 2, "ima"), Prior.iid(GaussianPrior1D(), 2), name="ima")


def _closed_gap(theta: float, gamma2: float) -> float:
    R = rotation_matrix(2, theta)
    Lam = np.eye(2) + gamma2 * R.T @ A.T @ A @ R
    return 0.5 * (float(np.sum(np.log(np.diag(Lam)))) - float(np.linalg.slogdet(Lam)[1]))


def _closed_log_px(X: np.ndarray, gamma2: float) -> np.ndarray:
    S = A @ A.T + np.eye(2) / gamma2
    _, logdet = np.linalg.slogdet(S)
    q = np.einsum("ni,ij,nj->n", X, np.linalg.inv(S), X)
    return -0.5 * (2 * math.log(2 * math.pi) + logdet + q)


def test_linear_gaussian_matches_closed_form() -> None:
    m = _linear()
    g2 = 100.0
    thetas = [0.0, 0.3, math.pi / 4]
    cands = [rotated_model(m, t) for t in thetas]
    draw = draw_population(m, 12, seed=3)
    X = draw.x(m, g2)
    po = population_objectives(cands, X, g2, groups=draw.groups, search=False,
                               z_init=[draw.Z @ torch.as_tensor(c.decoder.R) for c in cands], full_cov=True)
    lp_cf = _closed_log_px(X.numpy(), g2)
    S = A @ A.T + np.eye(2) / g2
    L_pop = -0.5 * (2 * math.log(2 * math.pi) + np.linalg.slogdet(S)[1] + 2)
    for k, t in enumerate(thetas):
        c = po.candidates[k]
        # per x: log p and ELBO* equal the closed forms to the reported quadrature error
        # (+1e-13 for the float64 evaluation of the closed form: κ(Σ) ≈ 5, |terms| ≤ 30)
        assert np.all(np.abs(c.log_px - lp_cf) <= c.log_px_err + 1e-13)
        assert np.all(np.abs(c.elbo - (lp_cf - _closed_gap(t, g2))) <= c.elbo_err + 1e-13)
        # the full-covariance encoder is exact for a Gaussian posterior: ELBO*_full = log p
        assert np.all(np.abs(c.elbo_full - lp_cf) <= c.elbo_full_err + 1e-13)
        # population means: Monte Carlo ± SE around the closed-form population values (4 SE)
        assert abs(c.L.value - L_pop) <= 4 * c.L.se
        assert abs(c.E.value - (L_pop - _closed_gap(t, g2))) <= 4 * c.E.se
        # paired differences are x-independent here: exact up to quadrature, SE at rounding level
        dE = po.diff("E", k)
        assert abs(dE.value - (_closed_gap(t, g2) - _closed_gap(0.0, g2))) <= dE.quad + 1e-13
        assert dE.se <= 1e-13
    assert _closed_gap(math.pi / 4, g2) - _closed_gap(0.0, g2) != 0.0  # the rotation matters for ELBO*


def test_paired_se_is_smaller_than_unpaired() -> None:
    m = _ima()
    g2 = 1e3
    cands = [rotated_model(m, t) for t in (0.0, math.pi / 4)]
    draw = draw_population(m, 16, seed=1)
    po = population_objectives(cands, draw.x(m, g2), g2, groups=draw.groups, search=False,
                               z_init=[draw.Z @ torch.as_tensor(c.decoder.R) for c in cands])
    paired = po.diff("E", 1).se
    unpaired = po.unpaired_se("E", 1)
    # the spread of ELBO*(x) over x (~1 nat) cancels in the paired difference; what is left is the
    # spread of the contrast difference (~0.1 nat): at least 5x smaller
    assert 0 < paired < unpaired / 5
    # unpaired_se is √(SE_0² + SE_1²) of the two means
    assert math.isclose(unpaired, math.hypot(po.candidates[0].E.se, po.candidates[1].E.se))


def test_L_flat_under_rotation_per_x() -> None:
    """Standard Gaussian prior: log p_γ(x; f∘R) = log p_γ(x; f) for every x (change of variables
    z = R u), so the per-x differences are within the quadrature error estimates."""
    m = _ima()
    cands = [rotated_model(m, t) for t in (0.0, 0.4, 1.1)]
    draw = draw_population(m, 6, seed=2)
    for g2 in (10.0, 1e4):
        po = population_objectives(cands, draw.x(m, g2), g2, groups=draw.groups, elbo=False)
        for k in (1, 2):
            d, e = po.diff_rows("L", k)
            assert np.all(np.abs(d) <= e)
            assert np.all(e < 1e-10)


def test_draw_is_seeded_antithetic_and_common_across_gamma2() -> None:
    m = _ima()
    a = draw_population(m, 5, seed=7)
    b = draw_population(m, 5, seed=7)
    c = draw_population(m, 5, seed=8)
    assert torch.equal(a.Z, b.Z) and torch.equal(a.xi, b.xi) and not torch.equal(a.Z, c.Z)
    assert a.num_rows == 10 and a.num_groups == 5
    x1, x2 = a.x(m, 100.0), a.x(m, 1e4)
    fz = m.decoder(a.Z)
    # the same (z, ξ) at every γ²; rows i and i+5 are the antithetic pair f(z) ± ξ/γ
    torch.testing.assert_close((x1 - fz) * 10, (x2 - fz) * 100, rtol=0, atol=1e-12)
    torch.testing.assert_close(x1[:5] - fz[:5], -(x1[5:] - fz[5:]), rtol=0, atol=1e-15)
    single = draw_population(m, 5, seed=7, antithetic=False)
    assert single.num_rows == 5 and list(single.groups) == list(range(5))


def test_group_mean_and_restrict_and_stack() -> None:
    g = group_mean(np.array([1.0, 3.0, 2.0, 6.0]), np.array([0, 1, 0, 1]))
    # group means 1.5 and 4.5
    assert g.value == 3.0 and math.isclose(g.se, np.std([1.5, 4.5], ddof=1) / math.sqrt(2)) and g.num_groups == 2
    m = _ima()
    draw = draw_population(m, 4, seed=0)
    X = draw.x(m, 1e3)
    cands = [rotated_model(m, t) for t in (0.0, 0.5)]
    zi = [draw.Z @ torch.as_tensor(c.decoder.R) for c in cands]
    both = population_objectives(cands, X, 1e3, groups=draw.groups, search=False, z_init=zi)
    parts = [population_objectives([c], X, 1e3, groups=draw.groups, search=False, z_init=z) for c, z in zip(cands, zi)]
    st = stack_candidates(parts)
    assert np.array_equal(st.candidates[1].elbo, both.candidates[1].elbo)
    sub = both.restrict(np.nonzero(draw.groups < 2)[0])
    assert sub.candidates[0].E.num_groups == 2
    assert math.isclose(sub.candidates[1].E.value, float(both.candidates[1].elbo[draw.groups < 2].mean()))
    with pytest.raises(ValueError, match="same γ²"):
        stack_candidates([parts[0], population_objectives([cands[1]], X, 1e4, groups=draw.groups, search=False, z_init=zi[1])])


def test_prior_contrasts_are_paired_and_vanish_for_the_truth() -> None:
    m = _ima()
    cc = prior_contrasts([rotated_model(m, t) for t in (0.0, math.pi / 4)], 512, seed=0)
    assert cc.shape == (2, 512)
    assert np.max(np.abs(cc[0])) < 1e-12  # IMA class: c_IMA(f, z) = 0 for every z
    assert np.all(cc[1] >= -1e-12) and cc[1].mean() > 0.03  # C_IMA(f∘R_{π/4}) ≈ 0.061


def test_bad_input_is_named() -> None:
    m = _ima()
    X = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="γ²"):
        population_objectives([m], X, -1.0)
    with pytest.raises(ModelError, match="shape"):
        population_objectives([m], torch.zeros(3, 5, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        population_objectives([m], X + float("nan"), 1.0)
    with pytest.raises(ValueError, match="groups"):
        population_objectives([m], X, 1.0, groups=np.array([0, 1]))
    with pytest.raises(ModelError, match="plane"):
        rotation_matrix(2, 0.1, (0, 0))
    with pytest.raises(ValueError, match="at least 2"):
        draw_population(m, 1, seed=0)
