"""The hypothesis strategies of proofs_check.strategies produce what they promise, and a failing
property shrinks to a small counterexample."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import assume
from hypothesis import strategies as st

from numerics.estimate import Estimate
from numerics.jacobian import c_ima_from_jacobian, jacobian
from numerics.posterior import find_modes
from numerics.sweep import evaluate_points
from proofs_check import strategies as S
from proofs_check.checks.evidence import GAP_PROPERTY_TRUNCATION, richardson_gap
from proofs_check.properties import run_property, run_property_strata, split_examples


def _collect(strategy: st.SearchStrategy, n: int) -> list:
    """n examples of a strategy, as a property run draws them (derandomized)."""
    out: list = []

    def keep(ex):
        out.append(ex)
        return True, ""

    res = run_property("collect", strategy, keep, n)
    assert res.passed and res.details["examples"] == n
    return out


def _svals(dec, z) -> np.ndarray:
    return torch.linalg.svdvals(jacobian(dec, torch.tensor(list(z), dtype=torch.float64))).numpy()


def test_non_ima_cases_are_admissible_non_identity_and_include_n_above_d() -> None:
    cases = [c for f in S.NON_IMA_FAMILIES for c in _collect(S.non_ima_cases(f), 8)]
    assert {c.family for c in cases} == set(S.NON_IMA_FAMILIES)
    assert {c.n for c in cases} == {2, 3} and {c.d for c in cases} == {2}
    logvol = []
    for c in cases:
        s = _svals(c.decoder, c.z0)
        J = jacobian(c.decoder, torch.tensor(c.z0, dtype=torch.float64))
        assert float(c_ima_from_jacobian(J)) >= S.C_IMA_MIN  # never identity-like
        assert s[-1] >= S.SIGMA_MIN and s[0] / s[-1] <= S.COND_MAX
        assert all(abs(v) <= S.Z_BULK for v in c.z0)
        if c.family == "near_singular":
            assert s[0] / s[-1] >= S.COND_NEAR_SINGULAR
        logvol.append(float(np.log(s).sum()))
        assert repr(c).startswith(c.family + "(") and "z0 = " in repr(c)
    assert max(abs(v) for v in logvol) > 0.5  # volumes far from 1, not a det ≡ 1 family


def test_near_singular_family_spans_the_conditioning_range() -> None:
    conds = [c.cond for c in _collect(S.non_ima_cases("near_singular"), 12)]
    assert min(conds) >= S.COND_NEAR_SINGULAR and max(conds) <= S.COND_MAX
    assert max(conds) > 1e3


def test_coupling_decoders_are_not_triangular() -> None:
    for c in _collect(S.non_ima_cases("coupling"), 6):
        J = jacobian(c.decoder, torch.tensor(c.z0, dtype=torch.float64))[:2].numpy()
        B = np.linalg.solve(c.decoder.params["A"][:2], J) if abs(np.linalg.det(c.decoder.params["A"][:2])) > 1e-3 else None
        if B is not None:  # the coupling part's Jacobian A⁻¹J is full (both off-diagonal entries ≠ 0)
            assert abs(B[0, 1]) > 1e-8 or abs(B[1, 0]) > 1e-8


def test_ima_cases_have_zero_contrast_everywhere_and_mostly_d2() -> None:
    cases = [c for f in S.IMA_FAMILIES for c in _collect(S.ima_cases(f), 6)]  # the strata C12 uses
    assert {c.family for c in cases} == set(S.IMA_FAMILIES)
    assert sum(c.d == 2 for c in cases) >= len(cases) / 2
    gen = torch.Generator().manual_seed(1)
    for c in cases:
        assert abs(c.c_ima) <= 1e-12
        z = c.prior.build(c.d).sample(5, gen).clamp(-2.0, 2.0)  # away from a Möbius pole (|a| ≥ 3)
        assert float(c_ima_from_jacobian(jacobian(c.decoder, z)).abs().max()) <= 1e-12


def test_noninjective_cases_have_two_symmetric_modes_of_equal_mass() -> None:
    cases = [c for d in (2, 1) for c in _collect(S.noninjective_cases(d), 2)]
    assert [c.d for c in cases] == [2, 2, 1, 1]
    for c in cases:
        z0 = torch.tensor(c.z0, dtype=torch.float64)
        mirror = z0.clone()
        mirror[0] = -mirror[0]
        x = c.decoder(z0)
        assert float((c.decoder(mirror) - x).abs().max()) <= 1e-12  # f(z0) = f(mirror)
        pm = find_modes(c.model, x[None], [1e4], z0[None])[0]
        assert pm.count == 2
        found = sorted(pm.modes[:, 0].tolist())
        assert found == pytest.approx(sorted([-abs(c.z0[0]), abs(c.z0[0])]), abs=1e-3)
        assert abs(float(pm.log_mass[0] - pm.log_mass[1])) <= 1e-6  # equal Laplace masses: log 2


def test_batches_vary_and_matrices_keep_their_promises() -> None:
    for b in _collect(S.non_ima_batches(16, 0), 4):
        assert b.c_ima.std() >= S.BATCH_C_IMA_SPREAD
    for m in _collect(S.matrices(), 40):
        n, d = m.shape
        assert n >= d and S.column_condition(m.array) <= S.COND_MAX
        if m.kind == "near_singular":
            assert S.column_condition(m.array) >= S.COND_NEAR_SINGULAR
    for m in _collect(S.orthogonal_column_matrices(), 20):
        G = m.array.T @ m.array
        assert np.abs(G - np.diag(np.diag(G))).max() <= 1e-12 * np.abs(G).max()
    for m in _collect(S.spd_matrices(), 10):
        assert np.linalg.eigvalsh(m.array).min() > 0


def test_a_planted_bug_shrinks_to_a_minimal_matrix() -> None:
    """A 'bug' that fails whenever some drawn entry exceeds 0.5: the reported example is the
    smallest one, a 1x1 matrix with the single entry 0.501 and no column scaling."""
    failing: list[S.Matrix] = []

    def pred(m: S.Matrix):
        bad = bool((m.parts["M"] > 0.5).any())
        if bad:
            failing.append(m)
        return not bad, f"{m!r}: an entry > 0.5"

    res = run_property("planted bug", S.matrices(), pred, 100)
    assert not res.passed
    m = failing[-1]  # hypothesis replays the minimal failing example last
    assert m.shape == (1, 1) and m.parts["M"][0, 0] == 0.501 and m.parts["t"][0] == 0.0
    assert res.details["example"] == repr(m) and "M=[[0.501]]" in res.details["shrunk_counterexample"]


def test_a_planted_bug_in_a_decoder_property_shrinks_to_a_readable_decoder() -> None:
    """A 'bug' that fails when a tanh weight B_ij exceeds 0.5: the counterexample is a minimal
    admissible decoder, A with both singular values at the floor 0.3, a single nonzero B entry
    (0.501) and no other nonlinearity (C = 0, c = 0).  (n may stay 3: A and B are drawn row by
    row, so dropping an output means deleting two separate rows at once.)"""
    failing: list[S.DrawnDecoder] = []

    def pred(dec: S.DrawnDecoder):
        bad = bool((dec.params["B"] > 0.5).any())
        if bad:
            failing.append(dec)
        return not bad, repr(dec)

    res = run_property("planted decoder bug", S.non_ima_decoders("affine_tanh"), pred, 50)
    assert not res.passed
    p = failing[-1].params
    assert np.linalg.svd(p["A"], compute_uv=False) == pytest.approx([S.SIGMA_MIN] * 2)
    assert np.count_nonzero(p["B"]) == 1 and p["B"].max() == 0.501
    assert np.count_nonzero(p["C"]) == 0 and np.count_nonzero(p["c"]) == 0
    assert res.details["example"] == repr(failing[-1])


def test_run_property_fails_when_assume_leaves_too_few_examples() -> None:
    @st.composite
    def rarely(draw):
        k = draw(st.integers(0, 1000))
        assume(k == 7)
        return k

    res = run_property("starved", rarely(), lambda k: (True, ""), 10)
    assert not res.passed


def test_gap_tolerance_is_capped_by_the_stated_accuracy() -> None:
    """An inflated error estimate of the gap does not widen the gap properties' tolerance past
    the a-priori accuracy of log p and ELBO*."""
    case = _collect(S.non_ima_cases("affine_tanh"), 1)[0]
    r6, r7 = evaluate_points(case.model, [torch.tensor(case.z0, dtype=torch.float64)], [1e6, 1e7], search_modes=False)
    lim, tol = richardson_gap(r6, r7, case.d)
    assert abs(lim - r6.c_ima) <= tol <= 2e-9
    inflate = lambda r: dataclasses.replace(r, gap=Estimate(r.gap.value, 1e-3, r.gap.method, r.gap.error_kind))  # noqa: E731
    _, tol_inflated = richardson_gap(inflate(r6), inflate(r7), case.d)
    assert tol_inflated <= 2e-9 and tol_inflated >= GAP_PROPERTY_TRUNCATION
    assert math.isfinite(tol_inflated)


def test_strata_give_every_family_its_share_and_report_the_failing_one() -> None:
    assert split_examples(4, 3) == [2, 1, 1] and split_examples(12, 3) == [4, 4, 4] and split_examples(2, 3) == [1, 1, 1]
    strata = [(f, S.non_ima_decoders(f)) for f in S.NON_IMA_FAMILIES]
    res = run_property_strata("all", strata, lambda dec: (True, ""), 4, summarize=lambda dec: {"family": dec.family})
    assert res.passed and res.details["distribution"]["family"] == {"affine_tanh": 2, "coupling": 1, "near_singular": 1}
    bad = run_property_strata("bad", strata, lambda dec: (dec.family != "coupling", repr(dec)), 6)
    assert not bad.passed and bad.details["stratum"] == "coupling"
    assert bad.details["shrunk_counterexample"].startswith("coupling(")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["non_ima", "ima", "noninjective"])
def test_richardson_remainder_stays_far_below_the_gap_tolerance(kind: str) -> None:
    """The gap properties allow 1e-9 for the O(ε²) remainder of (10·gap(1e7) − gap(1e6))/9.
    hypothesis is *steered* (hypothesis.target) towards the largest |limit − prediction| /
    tolerance over 60 cases of each kind; the admissibility filters (σ_min ≥ 0.3,
    curvature ratio ≤ 4, cond ≤ 1e4) must keep it below 1/2 (0.15 the largest seen)."""
    from hypothesis import target

    def pred(c: S.GapCase):
        r6, r7 = evaluate_points(c.model, [torch.tensor(c.z0, dtype=torch.float64)], [1e6, 1e7],
                                 search_modes=(kind == "noninjective"))
        lim, tol = richardson_gap(r6, r7, c.d)
        ratio = abs(lim - c.c_ima - (math.log(2) if kind == "noninjective" else 0.0)) / tol
        target(ratio)
        return ratio <= 0.5, f"{c!r}: |limit − prediction| / tolerance = {ratio:.3g}"

    res = run_property(f"remainder {kind}", S.gap_cases(kind), pred, 60)
    assert res.passed, res.details
