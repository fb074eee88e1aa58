"""The `gapcheck` CLI as a user runs it: evaluate output, JSON schema, bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from proofs_check.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "triangular.toml"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proofs_check", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_evaluate_json_schema_and_order(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    assert main(["evaluate", str(EXAMPLE), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    res = data["results"]
    # one entry per (latent, γ²), latents outer, in the spec's order
    assert [(r["latent"], r["gamma2"]) for r in res] == [
        (z, g) for z in ([0.3, 1.1], [-0.8, -0.5]) for g in (1.0, 10.0, 100.0, 1e4, 1e6, 1e8)
    ]
    keys = {"latent", "x", "gamma2", "log_px", "elbo_star", "gap", "c_ima", "l_ima", "mu_star", "s_star", "error"}
    for r in res:
        assert keys <= set(r)
        assert set(r["error"]) == {"log_px", "elbo_star", "gap"}
        assert math.isclose(r["gap"], r["log_px"] - r["elbo_star"], abs_tol=1e-9)
        assert math.isclose(r["l_ima"], r["log_px"] - r["c_ima"], abs_tol=1e-12)
        assert all(math.isfinite(v) for v in (r["log_px"], r["elbo_star"], r["gap"]))
        # x = f(z0) for f = (z1 + 0.4 z2², z2)
        z1, z2 = r["latent"]
        assert r["x"] == pytest.approx([z1 + 0.4 * z2**2, z2], abs=1e-15)
    # the gap approaches c_IMA: at γ² = 1e8 within |a1|ε (|a1| < 1 here) + error
    last = res[5]
    assert abs(last["gap"] - last["c_ima"]) < 1e-8 + last["error"]["gap"]


def test_evaluate_table_and_module_entry_point() -> None:
    p = run_cli("evaluate", str(EXAMPLE), "--no-prediction")
    assert p.returncode == 0, p.stderr
    assert "log p" in p.stdout and "ELBO*" in p.stdout and "c_IMA" in p.stdout
    assert len([ln for ln in p.stdout.splitlines() if ln.strip().startswith("(")]) == 12


BAD_SPECS = {
    "malformed TOML": ('decoder = ["z1" "z2"]\n', "malformed TOML"),
    "unknown symbol": ('decoder = ["z1 + q", "z2"]\ngamma2 = [1.0]\nlatents = [[0.1, 0.2]]\n', "unknown symbol 'q'"),
    "attribute access": ('decoder = ["z1.__class__", "z2"]\ngamma2 = [1.0]\nlatents = [[0.1, 0.2]]\n', "not allowed"),
    "function call": ('decoder = ["open(z1)", "z2"]\ngamma2 = [1.0]\nlatents = [[0.1, 0.2]]\n', "function 'open' is not allowed"),
    "dimension mismatch": ('decoder = ["z1", "z2"]\ngamma2 = [1.0]\nlatents = [[0.1, 0.2, 0.3]]\n', "dimension mismatch"),
    "n < d": ('decoder = ["z1 + z2"]\ngamma2 = [1.0]\nlatents = [[0.1, 0.2]]\n', "n = 1 decoder outputs < d = 2"),
    "singular J": ('decoder = ["z1**3", "z2"]\ngamma2 = [1.0]\nlatents = [[0.0, 0.2]]\n', "singular"),
    "gamma2 zero": ('decoder = ["z1", "z2"]\ngamma2 = [0.0]\nlatents = [[0.1, 0.2]]\n', "finite and > 0"),
    "gamma2 negative": ('decoder = ["z1", "z2"]\ngamma2 = [-1.0]\nlatents = [[0.1, 0.2]]\n', "finite and > 0"),
    "gamma2 nan": ('decoder = ["z1", "z2"]\ngamma2 = [nan]\nlatents = [[0.1, 0.2]]\n', "finite and > 0"),
    "gamma2 inf": ('decoder = ["z1", "z2"]\ngamma2 = [inf]\nlatents = [[0.1, 0.2]]\n', "finite and > 0"),
    "unknown prior": ('decoder = ["z1", "z2"]\nprior = "laplacian"\ngamma2 = [1.0]\nlatents = [[0.1, 0.2]]\n', "unknown prior 'laplacian'"),
    "non-integrable prior": ('decoder = ["z1", "z2"]\nprior = {logpdf = "z"}\ngamma2 = [1.0]\nlatents = [[0.1, 0.2]]\n', "prior"),
    "no latents": ('decoder = ["z1", "z2"]\ngamma2 = [1.0]\n', "no 'latents'"),
    "unknown key": ('decoder = ["z1", "z2"]\ngama2 = [1.0]\n', "unknown spec keys"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_input_clear_error_no_output(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text, needle = BAD_SPECS[case]
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    out = tmp_path / "out.json"
    code = main(["evaluate", str(spec), "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 2, (case, code, err)
    assert needle in err, (case, err)
    assert err.startswith("gapcheck: error:") and "Traceback" not in err
    assert not out.exists(), "no partial output file on error"
    assert not list(tmp_path.glob(".out.json*")), "no temporary file left behind"


def test_bad_input_through_the_console_entry_point(tmp_path: Path) -> None:
    """The same path as a user's shell: a subprocess, exit status 2, one line, no traceback."""
    p = run_cli("evaluate", str(tmp_path / "nope.toml"))
    assert p.returncode == 2 and "cannot read spec" in p.stderr and "Traceback" not in p.stderr


def test_cuda_requested_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert main(["evaluate", str(EXAMPLE), "--device", "cuda"]) == 2


def test_noninjective_decoder_is_flagged(tmp_path: Path) -> None:
    """N1: legal input, outside the theorems: the extra mode is found, included, flagged."""
    spec = tmp_path / "n1.toml"
    spec.write_text('decoder = ["z1**2", "z2"]\nprior = "gaussian"\ngamma2 = [1e6]\nlatents = [[1.0, 0.5]]\n')
    out = tmp_path / "o.json"
    assert main(["evaluate", str(spec), "--json", str(out), "--no-prediction"]) == 0
    r = json.loads(out.read_text())["results"][0]
    assert r["n_modes"] == 2 and "multimodal" in r["flags"]
    assert abs(r["gap"] - (r["c_ima"] + math.log(2))) < 1e-5  # |a1|ε with ε = 1e-6


def test_claims_listing(capsys: pytest.CaptureFixture) -> None:
    assert main(["claims", "--json"]) == 0
    ids = [c["id"] for c in json.loads(capsys.readouterr().out)]
    assert ids == [f"C{i}" for i in range(1, 18)] + ["N1", "N2", "V1"]


def test_unknown_claim_id(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["verify", "--quick", "--claims", "C99", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "unknown claim id" in capsys.readouterr().err


def test_evaluate_with_importance_sampling_agrees_with_quadrature(tmp_path: Path) -> None:
    """--log-px-method is: within 4 reported standard errors (+ the GH error) of Gauss–Hermite."""
    gh, is_ = tmp_path / "gh.json", tmp_path / "is.json"
    assert main(["evaluate", str(EXAMPLE), "--json", str(gh), "--no-prediction"]) == 0
    assert main(["evaluate", str(EXAMPLE), "--json", str(is_), "--no-prediction", "--log-px-method", "is", "--samples", "20000"]) == 0
    for a, b in zip(json.loads(gh.read_text())["results"], json.loads(is_.read_text())["results"]):
        assert "log_px_monte_carlo" in b["flags"] and b["diagnostics"]["log_px_ess"] > 100
        assert abs(a["log_px"] - b["log_px"]) <= 4 * b["error"]["log_px"] + a["error"]["log_px"]
        assert a["elbo_star"] == b["elbo_star"]


def test_the_parser_imports_no_numeric_stack() -> None:
    """`gapcheck --help` and argument errors answer without importing torch, sympy or
    python-flint, and `evaluate --workers N` starts its cluster before they are imported."""
    code = ("import sys; from proofs_check.cli import build_parser; "
            "build_parser().parse_args(['evaluate', 'x.toml', '--max-memory', '2G', '--workers', '2']); "
            "print([m for m in ('torch', 'sympy', 'flint', 'numpy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_experiment_parser_names_every_experiment() -> None:
    from proofs_check.cli_parsers import EXPERIMENT_NAMES
    from proofs_check.experiments import EXPERIMENTS

    assert EXPERIMENT_NAMES == tuple(EXPERIMENTS)
