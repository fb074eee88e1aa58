"""Output files and folders: checked before any computation, never destroying an input, written
whole (an interrupted run leaves the old report or the new one), with the user's umask, and no
stray files in the working directory."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import proofs_check.verification as verification
from proofs_check.cli import main

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "examples" / "triangular.toml"


def _refused(capsys: pytest.CaptureFixture, argv: list[str], words: str) -> None:
    t0 = time.perf_counter()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert time.perf_counter() - t0 < 5  # refused before the computation, not after it


def test_json_onto_the_spec_is_refused_and_the_spec_kept(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.read_text())
    _refused(capsys, ["evaluate", str(spec), "--json", str(spec)], "input spec")
    assert spec.read_text() == SPEC.read_text()


@pytest.mark.parametrize("where, words", [("/sys/gapcheck.json", "/sys"), ("/proc/gapcheck.json", "/proc"), ("DIR", "not a regular file")])
def test_json_into_a_special_place_is_refused_early(where: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = str(tmp_path) if where == "DIR" else where
    _refused(capsys, ["evaluate", str(SPEC), "--json", target], words)


def test_verify_out_onto_a_file_or_a_foreign_folder_is_refused_early(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    _refused(capsys, ["verify", "--quick", "--out", str(f)], "not a folder")
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    _refused(capsys, ["verify", "--quick", "--out", str(d)], "not a gapcheck report")
    assert (d / "notes.txt").read_text() == "keep me"


def test_interrupted_report_leaves_the_old_one_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "rep"
    report, ctx = verification.run_verify(["C3"], mode="quick", show_progress=False)
    verification.write_report(report, ctx, out, plots=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def dies(report, ctx, folder, progress=False):
        (Path(folder) / "gap.png").write_bytes(b"half a figure")
        raise KeyboardInterrupt  # SIGTERM / Ctrl-C in the figure phase

    import proofs_check.plots as plots

    monkeypatch.setattr(plots, "make_figures", dies)
    with pytest.raises(KeyboardInterrupt):
        verification.write_report(report, ctx, out, plots=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # no temporary folder left behind


def test_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert main(["evaluate", str(SPEC), "--json", str(tmp_path / "o.json"), "--no-prediction"]) == 0
        report, ctx = verification.run_verify(["C3"], mode="quick", show_progress=False)
        verification.write_report(report, ctx, tmp_path / "rep", plots=False)
    finally:
        os.umask(old)
    for p in [tmp_path / "o.json", tmp_path / "rep" / "report.json", tmp_path / "rep" / "report.md"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    json.loads((tmp_path / "o.json").read_text())


def test_no_hypothesis_folder_and_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYPOTHESIS_STORAGE_DIRECTORY", None)
    r = subprocess.run([sys.executable, "-m", "proofs_check", "verify", "--quick", "--claims", "C3", "--no-plots", "--no-progress",
                        "--out", "rep"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]
    p = subprocess.Popen([sys.executable, "-m", "proofs_check", "claims"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()
    assert p.wait(timeout=60) == 0
    assert p.stderr.read() == b""
