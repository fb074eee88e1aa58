"""`gapcheck experiment` end to end on the reduced ``tiny`` profile: E1 and E2 train, score
the trained encoders exactly, write results.json / report.md / figures; the E1 inequality
ELBO_trained ≤ ELBO* holds and a planted scoring fault (an entropy sign error) breaks it."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from numerics.estimate import Estimate
from proofs_check import experiments as X
from proofs_check.runtime import UserError


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp")
    res = X.run_experiments(["E1", "E2"], mode="tiny", device="cpu", out=out, progress=False)
    return out, res


def test_tiny_profile_writes_outputs_and_holds_the_e1_inequality(tiny_run) -> None:
    out, res = tiny_run
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert data["schema"] == X.SCHEMA and [e["name"] for e in data["experiments"]] == ["E1", "E2"]
    assert (out / "report.md").read_text(encoding="utf-8").startswith("# gapcheck experiments")
    for stem in ("e1_gap", "e2_self_consistency"):
        assert (out / f"{stem}.png").stat().st_size > 0 and (out / f"{stem}.svg").stat().st_size > 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["E1_triangular.pt"]
    e1 = data["experiments"][0]
    prof = X.PROFILES["tiny"]
    assert len(e1["rows"]) == len(prof.gamma2) * prof.seeds * 2  # γ² × seeds × (manifold, noisy)
    for row in e1["rows"]:
        for key in ("elbo_trained", "elbo_star", "log_px"):
            assert set(row[key]) >= {"value", "error", "error_kind"} and math.isfinite(row[key]["value"])
        assert row["elbo_trained"]["value"] <= row["elbo_star"]["value"] + row["elbo_star"]["error"] + row["elbo_trained"]["quadrature_error"]
        assert row["elbo_star"]["value"] <= row["log_px"]["value"] + 1e-9  # C1: log p − ELBO* = KL ≥ 0
        assert row["max_excess_over_elbo_star"] <= 0
    assert all(c["passed"] for c in e1["checks"])
    e2 = data["experiments"][1]
    assert {s["k"] for s in e2["summary"]} == {1, 2}
    for s in e2["summary"]:  # the exact s* falls like γ⁻² over the grid (theory: slope → −1)
        assert abs(s["slope_exact"] + 1) < 0.05


def test_planted_entropy_sign_error_is_rejected(tiny_run, monkeypatch) -> None:
    out, _ = tiny_run
    real = X.elbo_gh

    def wrong(model, x, g2, mu, s, **kw):
        e = real(model, x, g2, mu, s, **kw)
        # −½ Σ log(2πe s) instead of +½ Σ log(2πe s)
        return Estimate(e.value - float(torch.log(2 * math.pi * math.e * s).sum()), e.error, e.method)

    monkeypatch.setattr(X, "elbo_gh", wrong)
    res = X.run_experiments(["E1"], mode="tiny", device="cpu", out=out / "planted", progress=False, plots=False)
    assert not res["experiments"][0]["passed"]


def test_cli_pieces(tiny_run, capsys) -> None:
    out, _ = tiny_run
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    X.add_experiment_parser(sub)
    args = p.parse_args(["experiment", "E9", "--out", str(out / "cli")])
    with pytest.raises(UserError, match="unknown experiment"):
        X.cmd_experiment(args)
    args = p.parse_args(["experiment", "E1", "--quick", "--seeds", "1", "--out", str(out / "cli")])
    with pytest.raises(UserError, match="seeds"):
        X.cmd_experiment(args)
    assert p.parse_args(["experiment", "--full"]).mode == "full"
