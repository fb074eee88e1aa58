"""Many points and many specs in one process (issue #10, item 3): generated points, chunked
evaluation with rows streamed to JSON Lines (and not kept when there are many), an
interrupted run that keeps its finished rows, predictions attached per point in closed form
(and skipped, with a reason, beyond their size limits)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proofs_check import cli, evaluation
from proofs_check.bridge import log_normalizers, numeric_model
from proofs_check.cli import main
from proofs_check.evaluation import evaluate_spec
from theory import expansions as E
from theory.spec import loads_spec

ROOT = Path(__file__).resolve().parents[2]
GRID = ('name = "grid"\ndecoder = ["z1 + 0.4*z2**2", "z2"]\nprior = "logistic"\ngamma2 = [1e2, 1e4]\n'
        'latents = { grid = [[-1, 1, 2], [0.5, 1.5, 2]] }\n')


def _spec(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _ulps(a: float, b: float) -> float:
    return 0.0 if a == b else abs(a - b) / math.ulp(max(abs(a), abs(b)))


def test_grid_points_are_evaluated_in_order_and_streamed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "rows.jsonl"
    assert main(["evaluate", str(_spec(tmp_path, GRID)), "--jsonl", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    grid = [[z1, z2] for z1 in (-1.0, 1.0) for z2 in (0.5, 1.5)]
    assert [(r["latent"], r["gamma2"]) for r in rows] == [(z, g) for z in grid for g in (1e2, 1e4)]
    for lo, hi in zip(rows[::2], rows[1::2]):  # the same point at γ² = 1e2 and 1e4
        c, a1 = lo["prediction"]["gap"]
        assert hi["prediction"] == lo["prediction"]
        res = [abs(r["gap"] - (c + a1 / r["gamma2"])) for r in (lo, hi)]
        # what the expansion leaves is O(ε²): 100² times smaller at γ² = 1e4 (factor 2 for the ε³ terms)
        assert res[1] <= 2e-4 * res[0] + hi["error"]["gap"], (lo["latent"], res)
    assert "model 'grid'" in capsys.readouterr().out  # 8 rows: tabulated


def test_predictions_are_the_expansion_at_each_point() -> None:
    """attach_predictions: the closed form at each row's own exact point, with the prior's
    numerically computed log normalizer (a custom prior), equal to expand_at to 4 ulp."""
    sym = loads_spec('decoder = ["tanh(z1) + 0.5*z2", "z2 - 0.2*z1**2"]\nprior = {logpdf = "-z**4/4 - z**2/2"}\n'
                     'gamma2 = [1e2, 1e4]\nlatents = [[0.3, -0.4]]\n')
    ln = sum(log_normalizers(numeric_model(sym)))
    assert ln != 0
    res = evaluate_spec(sym, predictions=True).results
    for r, p in zip(res, [pt for pt in sym.points for _ in sym.gamma2]):
        exact = E.expand_at(sym, p, log_normalizer=ln).as_floats()
        got = r.prediction
        assert got["normalized"] and exact["normalized"]
        for key in ("gap", "log_px", "elbo_star"):
            for a, b in zip(got[key], exact[key]):
                assert _ulps(a, b) <= 4, (key, a, b)
        for a, b in zip(got["mu_star"][1] + got["s_star"][1], exact["mu_star"][1] + exact["s_star"][1]):
            assert _ulps(a, b) <= 4


def test_many_rows_are_streamed_not_kept(tmp_path: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """With --jsonl, a spec with more rows than TABLE_MAX_ROWS (lowered here) is not kept in
    memory: a summary replaces the table, and every row is in the file."""
    monkeypatch.setattr(cli, "TABLE_MAX_ROWS", 5)
    out = tmp_path / "rows.jsonl"
    assert main(["evaluate", str(_spec(tmp_path, GRID)), "--jsonl", str(out), "--no-prediction"]) == 0
    text = capsys.readouterr().out
    assert "8 evaluations" in text and "not tabulated, not kept in memory" in text and "flags: none" in text
    assert len(out.read_text().splitlines()) == 8
    seen = []
    ev = evaluate_spec(loads_spec(GRID), predictions=False, on_result=seen.append, keep_results=False)
    assert ev.results == [] and ev.n_results == ev.count == len(seen) == 8


def test_more_rows_than_memory_allows_need_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "MAX_KEPT_ROWS", 5)
    spec = _spec(tmp_path, GRID)
    assert main(["evaluate", str(spec)]) == 2
    assert "8 evaluations" in capsys.readouterr().err
    assert main(["evaluate", str(spec), "--json", str(tmp_path / "o.json"), "--jsonl", str(tmp_path / "o.jsonl")]) == 2
    assert "--json holds every row" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "o.jsonl").exists()


def test_an_interrupted_run_keeps_its_finished_rows(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during the second chunk (KeyboardInterrupt raised from the numerics): exit 130,
    and the file holds the rows of the finished chunk, each a complete JSON object."""
    monkeypatch.setattr(evaluation, "POINT_CHUNK", 4)  # 2 points (x 2 γ²) per chunk
    real = evaluation.evaluate_points
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_points", interrupted)
    out = tmp_path / "rows.jsonl"
    assert main(["evaluate", str(_spec(tmp_path, GRID)), "--jsonl", str(out), "--no-prediction"]) == 130
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all(r["model"] == "grid" for r in rows)
    assert "interrupted" in capsys.readouterr().err


def test_prediction_skipped_is_stated_per_row(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond the closed form's limits (lowered here) a row has "prediction": null and the
    reason; the table says it once."""
    monkeypatch.setattr(E, "MAX_CONTRACTION_OPS", 1)
    out = tmp_path / "o.json"
    assert main(["evaluate", str(_spec(tmp_path, GRID)), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert all(r["prediction"] is None and "operations per point" in r["prediction_skipped"] for r in rows)
    assert "prediction skipped: n = 2, d = 2" in capsys.readouterr().out
    assert main(["evaluate", str(_spec(tmp_path, GRID)), "--json", str(out), "--no-prediction"]) == 0
    assert all("prediction" not in r and "prediction_skipped" not in r for r in json.loads(out.read_text())["results"])


def test_several_specs_with_predictions_in_one_process(tmp_path: Path) -> None:
    """Three small specs in one call give the rows of three separate calls (the closed-form
    predictions and the numerics do not depend on what ran before)."""
    texts = {
        "tri": 'decoder = ["z1 + 0.4*z2**2", "z2"]\nprior = "logistic"\n',
        "ima": 'decoder = ["0.6*tanh(z1) - 0.8*(z2 + 0.3*z2**3)", "0.8*tanh(z1) + 0.6*(z2 + 0.3*z2**3)"]\nprior = "logistic"\n',
        "emb": 'decoder = ["z1", "z2", "0.5*sin(z1)*z2"]\nprior = "gaussian"\n',
    }
    paths = [_spec(tmp_path, t + "gamma2 = [1e6]\nlatents = [[0.3, -0.2]]\n", f"{k}.toml") for k, t in texts.items()]
    both = tmp_path / "all.jsonl"
    assert main(["evaluate", *map(str, paths), "--jsonl", str(both)]) == 0
    together = [json.loads(line) for line in both.read_text().splitlines()]
    apart = []
    for p in paths:
        one = tmp_path / f"{p.stem}.jsonl"
        assert main(["evaluate", str(p), "--jsonl", str(one)]) == 0
        apart += [json.loads(line) for line in one.read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if k != "diagnostics"}  # noqa: E731
    assert [strip(r) for r in together] == [strip(r) for r in apart] and len(together) == 3


@pytest.mark.slow
def test_sigint_keeps_the_rows_written_so_far(tmp_path: Path) -> None:
    """A real SIGINT to `gapcheck evaluate --jsonl` while it runs: exit status 130, and every
    line in the file is a complete row."""
    spec = _spec(tmp_path, 'decoder = ["z1 + 0.4*z2**2", "z2"]\nprior = "logistic"\ngamma2 = [1e2]\n'
                           'latents = { sample = 5000, seed = 1 }\n')
    out = tmp_path / "rows.jsonl"
    env = {**os.environ, "GAPCHECK_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "proofs_check", "evaluate", str(spec), "--jsonl", str(out),
                             "--no-prediction", "--no-progress"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # SIGINT handled as in a terminal even when the tests run as a background job
                            # (a shell without job control starts those with SIGINT ignored, and a child
                            # inherits that: Python then installs no KeyboardInterrupt handler)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 256):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = out.read_text().splitlines()
    assert 256 <= len(lines) < 5000
    assert all(json.loads(line)["gamma2"] == 100.0 for line in lines)
