"""The generic formulas are derived in-process and never read from disk (issues #8 and #9).

(a) A pickle planted where the old on-disk cache looked ($GAPCHECK_CACHE_DIR, ~/.cache/gapcheck)
    carries a payload that creates a marker file when unpickled; neither ``expand_at`` nor
    ``python -m proofs_check derive`` may load it (nor call any unpickler at all).
(b) A change of a module the derivation depends on (a Gaussian moment of theory.moments made
    1 % wrong, after the in-memory caches are cleared) changes the derived a1: nothing stale
    survives, even with the old cache locations populated by a previous derivation.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import sympy as sp

import theory.expansions as expansions
import theory.moments as moments
from theory.expansions import expand_at, generic_formulas
from theory.spec import loads_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = 'name = "tri"\ndecoder = ["z1 + 0.4*z2**2", "z2"]\nprior = "gaussian"\nlatents = [[0.3, -0.5]]\n'


class _Payload:
    """Unpickling this object calls open(marker, "w"): the file's existence proves a load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant(folder: Path, marker: Path) -> list[Path]:
    """Pickles with the payload under every name the old cache used (n, d up to 3; the digest of
    today's expansions.py) and a few plausible others."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(Path(expansions.__file__).read_bytes()).hexdigest()[:16]
    names = [f"generic_n{n}_d{d}_sympy{sp.__version__}_{digest}.pickle" for n in range(1, 4) for d in range(1, n + 1)]
    names += ["generic_n2_d2.pickle", "generic_formulas.pickle", "cache.pkl"]
    blob = pickle.dumps(_Payload(marker))
    paths = []
    for name in names:
        p = folder / name
        p.write_bytes(blob)
        paths.append(p)
    return paths


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Cache folders with planted pickles, pointed at by GAPCHECK_CACHE_DIR and HOME; every
    unpickling entry point records its calls.  Clears the in-memory caches before and after."""
    marker = tmp_path / "PAYLOAD_RAN"
    cache_dir, home = tmp_path / "cache", tmp_path / "home"
    planted = _plant(cache_dir, marker) + _plant(home / ".cache" / "gapcheck", marker)
    monkeypatch.setenv("GAPCHECK_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("HOME", str(home))
    calls: list[str] = []

    def trap(name: str, real):
        def wrapped(*a, **k):
            calls.append(name)
            return real(*a, **k)

        return wrapped

    monkeypatch.setattr(pickle, "load", trap("load", pickle.load))
    monkeypatch.setattr(pickle, "loads", trap("loads", pickle.loads))
    generic_formulas.cache_clear()
    yield {"marker": marker, "planted": planted, "calls": calls, "env": dict(os.environ)}
    generic_formulas.cache_clear()


def test_expand_at_never_loads_a_planted_pickle(planted) -> None:
    m = loads_spec(SPEC)
    e = expand_at(m, m.points[0])
    assert all(e.checks.values()) and e.a1.is_Rational and e.a1 != 0  # the derivation ran
    assert not planted["marker"].exists(), "a planted pickle was unpickled"
    assert planted["calls"] == []
    assert all(p.read_bytes() == pickle.dumps(_Payload(planted["marker"])) for p in planted["planted"])  # untouched


def test_cli_derive_never_loads_a_planted_pickle(planted, tmp_path: Path) -> None:
    spec = tmp_path / "tri.toml"
    spec.write_text(SPEC)
    env = planted["env"] | {"GAPCHECK_THREADS": "1"}
    # the run's own unpicklers are trapped too: any call writes a second marker
    trapped = tmp_path / "UNPICKLER_CALLED"
    code = (
        "import pickle, runpy, sys\n"
        "def trap(real):\n"
        "    def f(*a, **k):\n"
        f"        open({str(trapped)!r}, 'w').close()\n"
        "        return real(*a, **k)\n"
        "    return f\n"
        "pickle.load, pickle.loads = trap(pickle.load), trap(pickle.loads)\n"
        f"sys.argv = ['gapcheck', 'derive', {str(spec)!r}]\n"
        "runpy.run_module('proofs_check', run_name='__main__', alter_sys=True)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "At z0 = (3/10, -1/2)" in res.stdout and "internal checks: all passed" in res.stdout
    assert not planted["marker"].exists(), "a planted pickle was unpickled"
    assert not trapped.exists(), "derive called an unpickler"


def test_no_module_uses_pickle() -> None:
    import ast

    for pkg in ("theory", "numerics", "proofs_check"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                assert not any(m.split(".")[0] in ("pickle", "cPickle", "dill", "shelve", "marshal") for m in mods), f"{path} imports {mods}"


def test_a_change_of_theory_moments_changes_the_derivation(planted) -> None:
    """A (4,2)/(2,4) Gaussian moment made 1 % wrong changes a1 of a curved 2-D model, even right
    after a correct derivation (the old disk cache would have served the correct, now stale,
    formulas); undoing the change gives the correct a1 back."""
    m = loads_spec(SPEC)
    pt = m.points[0]
    a1 = expand_at(m, pt).a1  # a warm derivation: with a disk cache, formulas would now be stored
    real = moments.gaussian_moment

    def wrong(alpha, cov):
        val = real(alpha, cov)
        return val * sp.Rational(101, 100) if tuple(alpha) in ((4, 2), (2, 4)) else val

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(moments, "gaussian_moment", wrong)
        generic_formulas.cache_clear()
        moments._mgf_power_coefficients.cache_clear()
        a1_wrong = expand_at(m, pt).a1
    generic_formulas.cache_clear()
    assert a1_wrong != a1
    assert abs(float(a1_wrong - a1)) > 1e-4 * abs(float(a1))  # a visible change, not rounding
    assert expand_at(m, pt).a1 == a1  # nothing of the wrong derivation survives either
    assert not planted["marker"].exists()
