"""Several specs in one process, chunked points with streaming results (JSON Lines)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proofs_check.cli import main
from proofs_check.evaluation import evaluate_spec
from theory.spec import loads_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "examples" / "triangular.toml"
IMA = ROOT / "proofs_check" / "models" / "ima.toml"
MANY = ('decoder = ["z1 + 0.4*z2**2", "z2"]\nprior = "logistic"\ngamma2 = [1e2, 1e4]\n'
        'latents = [[0.3, 1.1], [-0.8, -0.5], [0.1, 0.2], [1.0, -1.0], [0.5, 0.5]]\n')


def test_several_specs_stream_to_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "rows.jsonl"
    assert main(["evaluate", str(SPEC), str(IMA), "--jsonl", str(out), "--no-prediction"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["model"] for r in rows].count("triangular") == 12 and [r["model"] for r in rows].count("ima") == 6
    assert all({"spec", "gap", "error", "gamma2", "latent"} <= set(r) for r in rows)
    assert "model 'triangular'" in capsys.readouterr().out


def test_json_takes_one_spec(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", str(SPEC), str(IMA), "--json", str(tmp_path / "o.json")]) == 2
    assert "--jsonl" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_chunks_give_the_same_numbers_and_stream_what_finished() -> None:
    sym = loads_spec(MANY)
    whole = evaluate_spec(sym, predictions=False, chunk=32)
    seen = []
    chunked = evaluate_spec(sym, predictions=False, chunk=2, on_result=seen.append)
    assert len(seen) == len(chunked.results) == 10
    for a, b in zip(whole.results, chunked.results):
        assert a.latent == b.latent and a.gamma2 == b.gamma2
        assert abs(a.gap.value - b.gap.value) <= a.gap.error + b.gap.error  # same estimate within its error

    class Stop(Exception):
        pass

    got = []

    def stop_after_four(r) -> None:
        got.append(r)
        if len(got) == 4:
            raise Stop

    with pytest.raises(Stop):
        evaluate_spec(sym, predictions=False, chunk=2, on_result=stop_after_four)
    assert len(got) == 4  # an interrupted run has handed out the results it finished
