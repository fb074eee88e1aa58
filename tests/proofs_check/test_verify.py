"""`gapcheck verify` fails, naming the claim, when a fault is planted in the real code path:
in c_IMA, or in the ELBO* optimizer (issue #4's acceptance criterion)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import numerics.sweep as ev
from numerics.elbo import elbo_gh
from proofs_check.cli import main
from proofs_check.properties import no_shrinking


def test_verify_passes_and_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "rep"
    assert main(["verify", "--quick", "--claims", "C11,N1", "--out", str(out), "--no-progress"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["passed"] and [c["id"] for c in rep["claims"]] == ["C11", "N1"]
    for c in rep["claims"]:
        assert c["status"] == "passed" and all(nc["rejected"] for nc in c["negative_controls"])
        assert len(c["evidence"]) >= 2
    for name in ("report.md", "gap.png", "gap.svg", "orders.png"):
        assert (out / name).stat().st_size > 0
    assert not (out / "self_consistency.png").exists()  # C7/C8 were not requested
    assert "18/18" not in capsys.readouterr().out  # only the two selected claims ran


def test_fault_in_c_ima_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    real = ev.c_ima_from_jacobian

    def wrong(J: torch.Tensor, rcond: float = 1e-12) -> torch.Tensor:
        # planted bug: the ½ in front of log det(JᵀJ) dropped
        return real(J) - 0.5 * torch.linalg.slogdet(J.T @ J)[1]

    monkeypatch.setattr(ev, "c_ima_from_jacobian", wrong)
    with no_shrinking():  # the claim must fail; shrinking its counterexample only costs time here
        code = main(["verify", "--quick", "--claims", "C11", "--out", str(tmp_path / "r"), "--no-progress", "--no-plots"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED claims: C11" in out


def test_fault_in_elbo_optimizer_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    real = ev.elbo_star

    def sloppy(model, posts, *a, **k):
        # planted bug: the optimizer stops at μ* + 0.05·γ⁻¹ (the size of an SGD encoder's error)
        out = []
        for st, pm in zip(real(model, posts, *a, **k), posts):
            mu = st.argmax["mu"] + 0.05 / math.sqrt(pm.gamma2)
            value = elbo_gh(model, pm.x, pm.gamma2, mu, st.argmax["s"], reduced=True).value
            out.append(dataclasses.replace(st, value=value, argmax={"mu": mu, "s": st.argmax["s"]}))
        return out

    monkeypatch.setattr(ev, "elbo_star", sloppy)
    with no_shrinking():
        code = main(["verify", "--quick", "--claims", "C7,C11", "--out", str(tmp_path / "r"), "--no-progress", "--no-plots"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED claims: C7, C11" in out
