"""The public Python API (proofs_check's top-level exports, docs/api.md)."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

import proofs_check as pc
from theory.spec import SpecError

ROOT = Path(__file__).resolve().parents[2]
SPEC = {"decoder": ["z1 + 0.4*z2**2", "z2"], "prior": "logistic", "gamma2": [1e2, 1e4], "latents": [[0.3, 1.1]]}


def test_api_tour_runs() -> None:
    """examples/api_tour.py, as docs/api.md tells a user to run it (it asserts as it goes)."""
    runpy.run_path(str(ROOT / "examples" / "api_tour.py"), run_name="__main__")


def test_issue_example_and_exports() -> None:
    r = pc.evaluate(str(ROOT / "examples" / "triangular.toml"), predictions=False)
    d = r.to_dict()
    assert set(d) == {"model", "device", "seconds", "results"} and len(d["results"]) == len(r.results)
    assert set(pc.__all__) <= set(dir(pc))
    for name in pc.__all__:  # every export is the API object, not a same-named submodule
        assert not isinstance(getattr(pc, name), type(pc)), name


def test_spec_forms_agree_and_columns() -> None:
    toml = 'decoder = ["z1 + 0.4*z2**2", "z2"]\nprior = "logistic"\ngamma2 = [1e2, 1e4]\nlatents = [[0.3, 1.1]]\n'
    a = pc.evaluate(SPEC, predictions=False)
    b = pc.evaluate(toml, predictions=False)
    assert [x.gap.value for x in a.results] == [x.gap.value for x in b.results]
    cols = a.columns()
    assert all(isinstance(v, np.ndarray) and len(v) == 2 for v in cols.values())
    assert np.allclose(cols["gap"], cols["log_px"] - cols["elbo_star"], atol=1e-9)
    assert np.all(cols["gap_error"] > 0)


def test_library_calls_use_cli_thread_defaults_and_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    import proofs_check.evaluation as evaluation

    real = evaluation.evaluate_points

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(evaluation, "evaluate_points", spy)
    torch.set_num_threads(2)
    try:
        pc.evaluate(SPEC, predictions=False)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


@pytest.mark.parametrize("bad, words", [
    ("no/such/file.toml", "no such spec file"),
    ({"decoder": ["z1 +"], "prior": "gaussian"}, "decoder"),
    (42, "a spec is a path"),
])
def test_bad_specs_raise_spec_error(bad, words: str) -> None:
    with pytest.raises(SpecError, match=words):
        pc.load_spec(bad)


def test_derive_and_claims() -> None:
    (d,) = pc.derive(SPEC)
    c, a1 = d.coefficients["gap"]
    r = pc.evaluate(SPEC, predictions=False).results[-1]  # γ² = 1e4
    assert abs(r.gap.value - (c + a1 * 1e-4)) < 1e-7  # O(ε²) = 1e-8 with |a2| ≲ 10
    ids = [c.id for c in pc.claims()]
    assert ids[0] == "C1" and "N2" in ids
