"""Fuzzing the command line (issue #9): hostile expressions and TOML documents.

The contract, checked on every example by running ``proofs_check.cli.main`` in this process on
a spec written to a temporary folder:

- the exit status is 0, 1 (numerical failure) or 2 (bad input), never 3 (internal error);
- on 1 or 2, stderr is exactly one line (``gapcheck: error: …`` / ``gapcheck: numerical
  failure: …``), never a traceback, and no output file (nor a temporary one) is left behind;
- on 0 the JSON output exists and parses;
- every example finishes within :data:`EXAMPLE_SECONDS` (:data:`LONG_SECONDS` in the long
  profile; ``signal.alarm`` raises inside the run, and the elapsed time is asserted too).

Examples are built from the spec grammar: expression trees over the function table
(theory.functions, plus functions that are *not* allowed), the arithmetic operators and some
that are refused, numbers (huge, tiny, negative, long literals, inf), the latents z1..z3 and junk
names; and TOML documents with random keys, values and types.  The default run is bounded
(derandomized, a few dozen examples, well under 20 s); ``-m slow`` runs a longer profile.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from proofs_check.cli import main
from theory.functions import SPEC_FUNCTIONS

#: Wall-clock limit of one example (one CLI run), seconds: the default profile, and the long one.
EXAMPLE_SECONDS = 30
LONG_SECONDS = 180


class _ExampleTimeout(BaseException):
    """Raised by the alarm inside a run that exceeds EXAMPLE_SECONDS (a BaseException, so that the
    CLI's own handlers cannot swallow it)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _ExampleTimeout("example ran longer than its time limit")


def run_contract(spec_bytes: bytes, command: str = "evaluate", seconds: int = EXAMPLE_SECONDS) -> int:
    """Run the CLI on ``spec_bytes`` and assert the contract (module docstring); return the status."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = folder / "spec.toml"
        spec.write_bytes(spec_bytes)
        out = folder / "out.json"
        if command == "evaluate":
            argv = ["evaluate", str(spec), "--json", str(out), "--no-prediction"]
        elif command == "evaluate+prediction":
            argv = ["evaluate", str(spec), "--json", str(out)]
        else:
            argv = ["derive", str(spec), "--out", str(out)]
        err, stdout = io.StringIO(), io.StringIO()
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(seconds)
        t0 = time.perf_counter()
        shown = spec_bytes[:300]
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
                code = main(argv)
        except _ExampleTimeout:  # an assertion, so that hypothesis reports the example
            raise AssertionError(f"{command} ran longer than {seconds} s on {shown!r}") from None
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        elapsed = time.perf_counter() - t0
        text = err.getvalue()
        event(f"exit {code}" + (f": {text.split(':', 3)[-1].strip()[:50]}" if code else ""))
        assert elapsed < seconds, (elapsed, shown)
        assert code in (0, 1, 2), (code, text, shown)
        assert "Traceback" not in text, (text, shown)
        leftovers = sorted(p.name for p in folder.iterdir() if p.name not in ("spec.toml", "out.json"))
        assert not leftovers, (leftovers, shown)
        if code == 0:
            assert out.exists(), shown
            if command != "derive":
                json.loads(out.read_text(encoding="utf-8"))
        else:
            assert text.endswith("\n") and text.count("\n") == 1, (text, shown)
            prefix = "gapcheck: error: " if code == 2 else "gapcheck: numerical failure: "
            assert text.startswith(prefix), (text, shown)
            assert len(text) < 1500, (len(text), text[:300])
            assert not out.exists(), ("an output file after a refusal", text, shown)
        return code


# ------------------------------------------------------------------------------------------
# Strategies
# ------------------------------------------------------------------------------------------

LATENTS = ["z1", "z2", "z3"]
JUNK_NAMES = ["q", "z0", "z9", "z01", "t", "z", "x", "pi", "E", "inf", "nan", "True", "None", "__import__", "os",
              "self", "lambda", "ζ"]
FUNCTIONS = sorted(SPEC_FUNCTIONS) + ["open", "eval", "loggamma", "sign", "gamma", "exec", "getattr"]
BINARY = ["+", "-", "*", "/", "**", "^", "//", "%", "<", " and ", "@", ","]
UNARY = ["-", "+", "~", "not "]
SPECIAL_NUMBERS = ["1e308", "1e999", "-1e999", "1e-320", "0.0", "-0.0", "0", "1j", "0x1f", "1_000", "9" * 150,
                   "0." + "3" * 120, "1e-300", "5e-324", "1000", "-1000", "0.5", "1e6", "2"]

numbers = st.one_of(
    st.integers(-1000, 1000).map(str),
    st.integers(-(10**400), 10**400).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(SPECIAL_NUMBERS),
)
leaves = st.one_of(st.sampled_from(LATENTS), st.sampled_from(JUNK_NAMES), numbers)


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    paren = st.booleans()
    return st.one_of(
        st.tuples(children, st.sampled_from(BINARY), children, paren).map(
            lambda t: f"({t[0]}{t[1]}{t[2]})" if t[3] else f"{t[0]}{t[1]}{t[2]}"),
        st.tuples(st.sampled_from(UNARY), children).map(lambda t: t[0] + t[1]),
        st.tuples(st.sampled_from(FUNCTIONS), st.lists(children, min_size=0, max_size=2)).map(
            lambda t: f"{t[0]}({', '.join(t[1])})"),
    )


trees = st.recursive(leaves, _extend, max_leaves=10)

#: Shapes that stress the parser's limits (long sums, sign runs, nested powers, deep nesting).
hostile = st.one_of(
    st.integers(1, 2500).map(lambda n: "+".join(["z1"] * n)),
    st.integers(1, 20000).map(lambda n: "-" * n + "z1"),
    st.integers(1, 4).map(lambda k: "(" * k + "z1" + "**1000)" * k),
    st.integers(1, 300).map(lambda k: "sin(" * k + "z1" + ")" * k),
    st.integers(1, 60).map(lambda k: "**".join(["2"] * k)),
    st.integers(1, 1200).map(lambda n: "z1*" * n + "z2"),
    st.sampled_from(["z1**sqrt(-1)", "sqrt(-1)", "log(z1)", "z1/(z1-z1)", "1/0", "exp(exp(exp(100)))",
                     "(z1+z2+1)**1000", "z1 # z9", "abs(z1)", "z1**0.5", "log(-1-z1**2)", "z1\n+z2", "\x00"]),
)
expressions = st.one_of(trees, trees, hostile)

priors = st.one_of(
    st.sampled_from(['"gaussian"', '"laplace"', '"laplace(0.5, 2)"', '"logistic(0.5, 2)"', '"student_t(3)"',
                     '"student_t"', '"Gaussian"', '"studentt(5)"', '"student_t(1000000)"', '"student_t(1e300)"',
                     '"student_t(1e-300)"', '"gaussian(0, 1-1)"', '"logistic(0, (1+sqrt(2))**2-3-2*sqrt(2))"',
                     '{logpdf = "-abs(z)"}', '{logpdf = "-z**4/4"}', '{logpdf = "z**2"}', "3", '["gaussian"]']),
    trees.map(lambda e: "{logpdf = " + json.dumps(e.replace("z1", "z")) + "}"),
    trees.map(json.dumps),
)
gamma2s = st.lists(st.one_of(st.sampled_from(["1e-300", "1e-8", "1.0", "1e4", "1e12", "1e16", "0", "-1", "nan", "inf",
                                              "true", '"1"']),
                             st.floats(1e-9, 1e13).map(repr)), min_size=0, max_size=3)
coordinates = st.one_of(st.floats(-3, 3).map(repr), st.sampled_from(["0", "1e300", "1e7", "nan", '"abc"', "true", "[]",
                                                                      "0.30000000000000004", "9" * 30]))
latents = st.lists(st.lists(coordinates, min_size=0, max_size=4), min_size=0, max_size=3)


ALLOWED = sorted(SPEC_FUNCTIONS)


def _extend_clean(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Only allowed constructs: + - * / ** (small exponents), unary minus, one-argument calls."""
    return st.one_of(
        st.tuples(children, st.sampled_from(["+", "-", "*", "/"]), children).map(lambda t: f"({t[0]}{t[1]}{t[2]})"),
        st.tuples(children, st.sampled_from(["2", "3", "0.5", "-1"])).map(lambda t: f"({t[0]})**{t[1]}"),
        children.map(lambda c: "-" + c),
        st.tuples(st.sampled_from(ALLOWED), children).map(lambda t: f"{t[0]}({t[1]})"),
    )


def _latent_leaves(d: int) -> st.SearchStrategy[str]:
    small = st.one_of(st.integers(-3, 3).map(str), st.floats(-2, 2).map(lambda v: repr(round(v, 3))))
    return st.one_of(st.sampled_from(LATENTS[:d]), small, st.sampled_from(["pi", "E", "1e-300", "1e6", "0.0"]))


@st.composite
def specs(draw: st.DrawFn, max_leaves: int = 6) -> bytes:
    """A spec with the right keys: each field is either well formed (so that the estimators run on
    random decoders z_k + c·tree(z)) or hostile (trees over junk, parser-limit shapes, bad types)."""
    d = draw(st.integers(1, 3))
    n = d + draw(st.integers(0, 1))
    well = draw(st.integers(0, 3)) < 3  # 0, hypothesis's first choice, is the well-formed branch
    local = st.recursive(_latent_leaves(d), _extend_clean, max_leaves=max_leaves)
    dec = []
    for i in range(n):
        if well and draw(st.integers(0, 5)) < 5:
            k = i % d + 1
            c = draw(st.sampled_from(["0.3", "0.1", "1", "-0.5", "1e-3", "2"]))
            dec.append(f"z{k} + {c}*({draw(local)})")
        else:
            dec.append(draw(expressions))
    lines = ["decoder = [" + ", ".join(json.dumps(e) for e in dec) + "]"]
    if draw(st.booleans()):
        named = st.sampled_from(['"gaussian"', '"laplace"', '"logistic"', '"student_t(4)"', '"laplace(0.2, 0.5)"'])
        lines.append("prior = " + draw(st.one_of(named, named, priors)))
    if draw(st.integers(0, 3)) < 3:
        g = draw(st.lists(st.sampled_from(["1.0", "10.0", "1e4", "1e8", "1e12", "1e-8", "0.01"]), min_size=1, max_size=3))
    else:
        g = draw(gamma2s)
    lines.append("gamma2 = [" + ", ".join(g) + "]")
    if draw(st.integers(0, 3)) < 3:
        pts = draw(st.lists(st.lists(st.floats(-2, 2).map(lambda v: repr(round(v, 4))), min_size=d, max_size=d),
                            min_size=1, max_size=2))
    else:
        pts = draw(latents)
    lines.append("latents = [" + ", ".join("[" + ", ".join(p) + "]" for p in pts) + "]")
    text = "\n".join(lines) + "\n"
    if draw(st.integers(0, 9)) == 0:
        text = "\ufeff" + text
    return text.encode("utf-8", "surrogatepass")


# TOML documents: random keys, values and types ------------------------------------------------

KEYS = ["decoder", "prior", "gamma2", "latents", "name", "description", "logpdf", "gama2", "", "z1"]
scalars = st.one_of(
    st.text(max_size=30),
    expressions,
    st.integers(-(10**30), 10**30),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                   st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), c,
                                                                   max_size=3)), max_leaves=12)


def toml_value(v: Any) -> str:
    """A minimal TOML writer for the generated values (inline tables and arrays)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(x)}" for k, x in v.items()) + "}"


documents = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), values, max_size=6).map(
    lambda d: ("\n".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}" for k, v in d.items()) + "\n").encode(
        "utf-8", "surrogatepass"))
raw = st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))

FUZZ = dict(deadline=None, database=None, derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
#: The long profile reports a failing example as drawn: shrinking one that ran into the time
#: limit would rerun it many times.
LONG = dict(FUZZ, phases=[Phase.explicit, Phase.reuse, Phase.generate])


# ------------------------------------------------------------------------------------------
# Default (bounded) profile
# ------------------------------------------------------------------------------------------


@settings(max_examples=40, **FUZZ)
@given(specs())
def test_fuzz_spec_contents(spec: bytes) -> None:
    run_contract(spec)


@settings(max_examples=30, **FUZZ)
@given(st.one_of(documents, raw))
def test_fuzz_toml_documents(doc: bytes) -> None:
    run_contract(doc)


# ------------------------------------------------------------------------------------------
# Longer profile
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
@settings(max_examples=600, **LONG)
@given(specs())
def test_fuzz_spec_contents_long(spec: bytes) -> None:
    """Up to 180 s per example: honest d = 3 work is slow (a non-injective d = 3 decoder at three
    γ² took 49 s and 2.4 GB on the development machine: two modes, 64³-node ELBO* rules)."""
    run_contract(spec, seconds=LONG_SECONDS)


@pytest.mark.slow
@settings(max_examples=300, **LONG)
@given(specs(max_leaves=3), st.sampled_from(["evaluate+prediction", "derive"]))
def test_fuzz_symbolic_paths_long(spec: bytes, command: str) -> None:
    """The symbolic paths (derive, evaluate's predictions) on shallow decoders: their cost is set
    by theory/expansions.py, which the spec limits do not bound for deep nesting (sin nested 10
    times takes minutes there), so the trees here have at most 3 leaves."""
    run_contract(spec, command)


@pytest.mark.slow
@settings(max_examples=600, **LONG)
@given(st.one_of(documents, raw), st.sampled_from(["evaluate", "derive"]))
def test_fuzz_toml_documents_long(doc: bytes, command: str) -> None:
    run_contract(doc, command, seconds=LONG_SECONDS)
