"""Scaling machinery (issue #10): memory-bounded chunked node sums, the budget refusals, randomized
QMC importance sampling, and the per-row method report of the sweep.

Tolerances:
- chunked vs unchunked: the two differ only in the order of floating-point sums (and in where
  Newton stops inside its rounding noise), so they must agree within the stated error of the
  estimate, which contains the rounding bound (numerics.posterior.rounding_bound) and the Newton
  decrement;
- randomized QMC: an estimate must lie within 4 of its standard errors of the exact value (the
  SE has R − 1 = 15 degrees of freedom: a two-sided t₁₅ tail of 1e-3 per estimate); over several
  seeds the root-mean-square of error/SE must stay below 2 (its expectation is ≈ 1.07, the
  t₁₅ standard deviation), so an SE that is too small by a factor of 2 is caught.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from numerics.elbo import elbo_objective, elbo_star
from numerics.models import CallableDecoder, GaussianPrior1D, LinearDecoder, LogisticPrior1D, Model, ModelError, Prior
from numerics.montecarlo import log_marginal_is, log_marginal_rqmc
from numerics.optimize import allocation_bytes
from numerics.posterior import find_modes, log_marginal_gh
from numerics.quadrature import MemoryBudgetError, TensorRule, parse_memory
from numerics.sweep import MAX_RULE_NODES, check_budget, choose_methods, evaluate_points, tensor_rule_nodes

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64


def _nl(d: int) -> Model:
    """A nonlinear decoder whose outputs mix the latents (d = 2 or 3), logistic prior."""
    def f(z: torch.Tensor) -> torch.Tensor:
        z1, z2 = z[..., 0], z[..., 1]
        if d == 2:
            return torch.stack([z1 + 0.4 * z2**2, z2 + 0.3 * torch.tanh(z1)], -1)
        z3 = z[..., 2]
        return torch.stack([z1 + 0.3 * torch.tanh(z2 * z3), z2 + 0.2 * torch.sin(z1) * z3, z3 + 0.25 * z1 * z2], -1)

    return Model(CallableDecoder(f, d, d, name=f"nl{d}"), Prior.iid(LogisticPrior1D(), d))


def _posts(model: Model, z0: list[float], gamma2s: list[float]):
    z = torch.tensor(z0, dtype=F64)
    x = model.decoder(z[None]).expand(len(gamma2s), -1)
    return find_modes(model, x, gamma2s, z[None].expand(len(gamma2s), -1))


# ----------------------------------------------------------------------------------------
# chunked = unchunked
# ----------------------------------------------------------------------------------------


def test_tensor_rule_chunks_are_the_whole_rule() -> None:
    for k, d in ((5, 3), (4, 6)):
        rule = TensorRule(k, d)
        nodes, logw = rule.whole()
        parts = [rule.chunk(a, a + 97) for a in range(0, rule.size, 97)]
        assert torch.equal(nodes, torch.cat([p[0] for p in parts]))
        assert float((logw - torch.cat([p[1] for p in parts])).abs().max()) <= 1e-14


@pytest.mark.parametrize("d", [2, 3])
def test_node_sum_objective_chunked_equals_whole(d: int) -> None:
    """Value, gradient and Hessian of the reduced ELBO summed over node chunks equal the
    unchunked ones (the budget forces chunks of a few dozen nodes)."""
    model = _nl(d)
    k = 8
    whole = elbo_objective(model, k, "cpu", max_memory=1 << 30, costs={})
    small = elbo_objective(model, k, "cpu", max_memory=256 << 10, costs={})
    x = torch.tensor([[0.1, -0.2, 0.05, 0.3, -0.1, 0.2][: 2 * d]], dtype=F64)
    z = torch.tensor([0.3, -0.5, 0.8][:d], dtype=F64)
    args = (model.decoder(z[None]), torch.tensor([1e-2], dtype=F64), z[None])
    assert whole.plan("derivatives", x, args).whole
    plan = small.plan("derivatives", x, args)
    assert not plan.whole and plan.nodes < k**d and plan.bytes <= 256 << 10
    v1, v2 = whole.value(x, args), small.value(x, args)
    (g1, h1), (g2, h2) = whole.derivatives(x, args), small.derivatives(x, args)
    assert float((v1 - v2).abs()) <= 1e-13 * max(1.0, float(v1.abs()))
    assert float((g1 - g2).abs().max()) <= 1e-10 * max(1.0, float(g1.abs().max()))
    assert float((h1 - h2).abs().max()) <= 1e-10 * float(h1.abs().max())


@pytest.mark.parametrize("d", [2, 3])
def test_elbo_star_and_log_px_chunked_equal_unchunked(d: int) -> None:
    model = _nl(d)
    gamma2s = [1e2, 1e4]
    posts = _posts(model, [0.3, -0.5, 0.8][:d], gamma2s)
    full = elbo_star(model, posts)
    chunked = elbo_star(model, posts, max_memory=2 << 20)
    for a, b in zip(full, chunked):
        assert abs(a.value - b.value) <= a.error + b.error
        assert float((a.argmax["mu"] - b.argmax["mu"]).abs().max()) <= 1e-9
        assert a.diagnostics["levels"] == b.diagnostics["levels"]
    for pm in posts:
        a = log_marginal_gh(model, pm, costs={})
        b = log_marginal_gh(model, pm, max_memory=64 << 10, costs={})
        assert a.diagnostics["levels"] == b.diagnostics["levels"]
        assert abs(a.value - b.value) <= a.error + b.error


def test_allocation_probe_bounds_a_known_allocation() -> None:
    n = 1000
    nbytes = allocation_bytes(lambda: torch.ones(n, dtype=F64) * 2.0)
    assert nbytes >= 2 * n * 8  # two float64 arrays of n


# ----------------------------------------------------------------------------------------
# budget refusals
# ----------------------------------------------------------------------------------------


def test_parse_memory() -> None:
    assert parse_memory("2G") == 2 << 30
    assert parse_memory("500M") == 500 << 20
    assert parse_memory("1.5GiB") == 3 << 29
    assert parse_memory("64k") == 64 << 10
    for bad in ("lots", "-1G", "2", "0M", "nanG"):
        with pytest.raises(ValueError):
            parse_memory(bad)


def test_tensor_rule_refused_beyond_its_node_budget_naming_a_method_that_fits() -> None:
    assert tensor_rule_nodes(9) > MAX_RULE_NODES >= tensor_rule_nodes(8)
    with pytest.raises(MemoryBudgetError, match="use --elbo-method sparse"):
        check_budget(10, "sparse", "tensor")
    with pytest.raises(MemoryBudgetError, match="use --log-px-method sparse or is"):
        check_budget(10, "gh", "sparse")
    assert issubclass(MemoryBudgetError, ModelError)
    assert check_budget(10) == ("sparse", "sparse")
    assert check_budget(2) == ("gh", "tensor") == choose_methods(2)
    with pytest.raises(ValueError):
        choose_methods(2, "mc", "auto")


def test_a_budget_below_one_node_is_refused() -> None:
    model = _nl(2)
    posts = _posts(model, [0.3, -0.5], [1e2])
    with pytest.raises(MemoryBudgetError, match="raise --max-memory"):
        elbo_star(model, posts, max_memory=4 << 10)
    with pytest.raises(MemoryBudgetError, match="raise --max-memory"):
        log_marginal_gh(model, posts[0], max_memory=200, costs={})
    with pytest.raises(MemoryBudgetError, match="memory budget"):
        evaluate_points(model, [torch.tensor([0.3, -0.5], dtype=F64)], [1e2], max_memory=4 << 10)


def test_cli_refusal_exits_2_with_the_message_and_no_traceback() -> None:
    """`gapcheck evaluate --max-memory 4K`: exit 2, the budget message, no traceback (black box:
    the CLI in a subprocess, so this numerics test does not import proofs_check)."""
    proc = subprocess.run([sys.executable, "-m", "proofs_check", "evaluate", str(ROOT / "examples" / "triangular.toml"),
                           "--max-memory", "4K", "--no-prediction", "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, env={"GAPCHECK_THREADS": "1", "PATH": ""}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "memory budget 4 KiB" in proc.stderr and "raise --max-memory" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------
# randomized QMC importance sampling
# ----------------------------------------------------------------------------------------


def _linear_gaussian(d: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d)) + 2 * np.eye(d)
    model = Model(LinearDecoder(A), Prior.iid(GaussianPrior1D(), d))
    z0 = torch.tensor(rng.normal(size=d) * 0.5, dtype=F64)
    return model, A, z0


def _exact_reduced_log_px(A: np.ndarray, x: np.ndarray, gamma2: float) -> float:
    """log N(x; 0, AAᵀ + γ⁻² I) for n = d (the divergent term is zero): docs/theory.md C5."""
    d = A.shape[0]
    C = A @ A.T + np.eye(d) / gamma2
    return float(-0.5 * d * math.log(2 * math.pi) - 0.5 * np.linalg.slogdet(C)[1] - 0.5 * x @ np.linalg.solve(C, x))


def test_rqmc_standard_error_is_honest_on_the_exact_linear_gaussian_case_d10() -> None:
    d = 10
    model, A, z0 = _linear_gaussian(d)
    g2 = 1.0
    x = model.decoder(z0[None])
    exact = _exact_reduced_log_px(A, x[0].numpy(), g2)
    pm = find_modes(model, x, [g2], z0[None])[0]
    ratios = []
    for seed in range(8):
        # the Student-t proposal differs from the Gaussian posterior: the weights vary
        est = log_marginal_rqmc(model, pm, 512, 16, seed=seed, proposal="laplace_t")
        assert est.error_kind == "standard_error" and est.error > 1e-4
        ratios.append((est.value - exact) / est.error)
    ratios_a = np.array(ratios)
    assert np.abs(ratios_a).max() <= 4.0, ratios
    assert math.sqrt((ratios_a**2).mean()) <= 2.0, ratios
    # the Laplace proposal is the exact posterior here: constant weights, only rounding remains
    est = log_marginal_rqmc(model, pm, 256, 16, seed=0, proposal="laplace")
    assert abs(est.value - exact) <= est.error <= 1e-11


def test_rqmc_is_seeded_deterministic_and_chunked_exactly() -> None:
    model = _nl(3)
    pm = _posts(model, [0.3, -0.5, 0.8], [1.0])[0]
    a = log_marginal_rqmc(model, pm, 256, 4, seed=3)
    b = log_marginal_rqmc(model, pm, 256, 4, seed=3)
    c = log_marginal_rqmc(model, pm, 256, 4, seed=4)
    small = log_marginal_rqmc(model, pm, 256, 4, seed=3, max_memory=64 << 10)  # chunks of a few dozen points
    assert a.value == b.value and a.error == b.error
    assert a.value != c.value
    assert abs(small.value - a.value) <= 1e-12 and a.diagnostics["replicates"] == 4
    assert len(a.diagnostics["replicate_values"]) == 4
    with pytest.raises(ValueError, match="power of 2"):
        log_marginal_rqmc(model, pm, 100, 4)


@pytest.mark.slow
def test_rqmc_beats_plain_monte_carlo_on_a_3d_nonlinear_model() -> None:
    """Same number of draws: the RQMC standard error is several times smaller than plain MC's,
    and both contain the converged Gauss–Hermite value."""
    model = _nl(3)
    pm = _posts(model, [0.3, -0.5, 0.8], [1e4])[0]
    ref = log_marginal_gh(model, pm)
    q = log_marginal_rqmc(model, pm, 1024, 16, seed=0)
    mc = log_marginal_is(model, pm, 1024 * 16, seed=0)
    assert abs(q.value - ref.value) <= 4 * q.error + ref.error
    assert abs(mc.value - ref.value) <= 4 * mc.error + ref.error
    assert q.error < mc.error / 2


# ----------------------------------------------------------------------------------------
# the sweep reports the method per row
# ----------------------------------------------------------------------------------------


def test_method_reported_per_row() -> None:
    model = _nl(2)
    z = [torch.tensor([0.3, -0.5], dtype=F64)]
    gh = evaluate_points(model, z, [1e2], search_modes=False)
    assert gh[0].method == {"log_px": "gh", "elbo_star": "tensor"}
    row = gh[0].to_dict()
    assert row["method"] == {"log_px": "gh", "elbo_star": "tensor"} and row["diagnostics"]["log_px_method"] == "gauss_hermite"
    is_ = evaluate_points(model, z, [1e2], search_modes=False, log_px_method="is", is_samples=4096)
    assert is_[0].method["log_px"] == "is" and "log_px_monte_carlo" in is_[0].flags
    assert is_[0].log_px.error_kind == "standard_error" and is_[0].gap.error_kind == "standard_error"
    assert is_[0].to_dict()["diagnostics"]["log_px_samples"] == 4096
    assert is_[0].to_dict()["diagnostics"]["log_px_proposal"] in ("laplace", "laplace_t")
    assert abs(is_[0].log_px.value - gh[0].log_px.value) <= 4 * is_[0].log_px.error + gh[0].log_px.error
    sp = evaluate_points(model, z, [1e2], search_modes=False, log_px_method="sparse", elbo_method="sparse")
    assert sp[0].method == {"log_px": "sparse", "elbo_star": "sparse"}
    assert abs(sp[0].gap.value - gh[0].gap.value) <= sp[0].gap.error + gh[0].gap.error
