"""Safe spec parsing (theory/spec.py): expressions are data, never code."""

from __future__ import annotations

import math

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.spec import (
    PRIOR_VARIABLE,
    SpecError,
    exact_number,
    latent_symbols,
    loads_spec,
    model_from_dict,
    parse_expression,
    parse_prior,
    point_subs,
)

Z = {str(z): z for z in latent_symbols(2)}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("z1.real", "attribute"),
        ("z1.__class__", "dunder"),
        ("__import__('os').system('true')", "dunder"),
        ("().__class__.__bases__", "dunder"),
        ("open('x')", "not allowed"),
        ("eval('1')", "not allowed"),
        ("exec('1')", "not allowed"),
        ("getattr(z1, 'real')", "not allowed"),
        ("sympify('1')", "not allowed"),
        ("y + z1", "unknown symbol"),
        ("z3", "unknown symbol"),
        ("z1^2", "use **"),
        ("z1 if z2 else 1", "IfExp"),
        ("lambda: 1", "Lambda"),
        ("[z1]", "List"),
        ("z1[0]", "Subscript"),
        ("'z1'", "numeric literals"),
        ("True", "numeric literals"),
        ("1j", "numeric literals"),
        ("z1 < z2", "Compare"),
        ("z1 // 2", "FloorDiv"),
        ("~z1", "Invert"),
        ("sin", "must be called"),
        ("sin(z1, z2)", "exactly one"),
        ("sin(x=z1)", "exactly one"),
        ("z1 +", "cannot parse"),
    ],
)
def test_parse_expression_refuses(text: str, fragment: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_expression(text, Z)
    assert fragment in str(err.value)


def test_parse_expression_refuses_non_string_and_huge() -> None:
    with pytest.raises(SpecError):
        parse_expression(3, Z)  # type: ignore[arg-type]
    with pytest.raises(SpecError):
        parse_expression("z1+" * 10_000 + "1", Z)


def test_parse_expression_exact_rationals_and_functions() -> None:
    z1, z2 = Z["z1"], Z["z2"]
    e = parse_expression("z1 + 0.4*z2**2 - 1e-3*sin(z1) + pi", Z)
    assert e == z1 + sp.Rational(2, 5) * z2**2 - sp.Rational(1, 1000) * sp.sin(z1) + sp.pi
    assert not any(isinstance(a, sp.Float) for a in sp.preorder_traversal(e))
    assert parse_expression("sigmoid(z1)", Z) == 1 / (1 + sp.exp(-z1))
    assert parse_expression("0.1", {}) == sp.Rational(1, 10)


def test_exact_number() -> None:
    assert exact_number(0.4) == sp.Rational(2, 5)
    assert exact_number(3) == 3
    assert exact_number("0.25") == sp.Rational(1, 4)
    for bad in (True, float("nan"), float("inf"), None):
        with pytest.raises(SpecError):
            exact_number(bad)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="z12 +-*/().,_abcdeilnopqrstx[]'\"^<>=!", max_size=25).filter(lambda s: "**" not in s))
def test_parse_expression_fuzz_never_escapes(text: str) -> None:
    """Arbitrary short strings either parse into a sympy expression or raise SpecError.

    ``**`` is filtered out: exact towers like 2**2**2**2**2**2 are evaluated eagerly by sympy
    (a resource problem of the parser, reported separately, not a code-execution one).
    """
    try:
        out = parse_expression(text, Z)
    except SpecError:
        return
    assert isinstance(out, sp.Basic)
    assert out.free_symbols <= set(Z.values())


def test_spec_dimensions_and_defaults() -> None:
    m = loads_spec('decoder = ["z1 + 0.4*z2**2", "z2", "z1*z2"]\nlatents = [[0.3, 1.1]]\ngamma2 = [1, 1e4]')
    assert (m.n, m.d) == (3, 2)
    assert m.points == ((sp.Rational(3, 10), sp.Rational(11, 10)),)
    assert m.gamma2 == (1.0, 1e4)
    assert all(p.kind == "gaussian" for p in m.priors)
    assert m.jacobian().shape == (3, 2)
    assert point_subs(m, m.points[0])[m.latents[0]] == sp.Rational(3, 10)
    with pytest.raises(SpecError, match="dimension mismatch"):
        point_subs(m, (1,))


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"decoder": ["z1", "z2"], "latents": [[0.1]]}, "dimension mismatch"),
        ({"decoder": ["z1", "z2"], "latents": [[0.1, 0.2], [0.3]]}, "same length"),
        ({"decoder": ["z1 + z2"]}, "n = 1 decoder outputs < d = 2"),
        ({"decoder": ["z1", "z2"], "prior": ["gaussian"]}, "prior lists 1 factors"),
        ({"decoder": ["1 + 2"]}, "uses no latent"),
        ({"decoder": []}, "non-empty"),
        ({"decoder": "z1", "gamma2": [0.0]}, "> 0"),
        ({"decoder": "z1", "gamma2": [-1.0]}, "> 0"),
        ({"decoder": "z1", "gamma2": [math.nan]}, "finite"),
        ({"decoder": "z1", "gamma2": [math.inf]}, "finite"),
        ({"decoder": "z1", "gamma2": [True]}, "numbers"),
        ({"decoder": "z1", "gamma2": []}, "non-empty"),
        ({"decoder": "z1", "prior": "cauchy"}, "unknown prior"),
        ({"decoder": "z1", "prior": "gaussian(0, -1)"}, "var must be > 0"),
        ({"decoder": "z1", "prior": "gaussian(0, 1, 2)"}, "takes 0 to 2 arguments"),
        ({"decoder": "z1", "prior": "student_t"}, "student_t takes 1 argument (degrees of freedom ν)"),
        ({"decoder": "z1", "prior": "student_t(0)"}, "nu must be > 0"),
        ({"decoder": "z1", "prior": "logistic(0, z)"}, "unknown symbol"),
        ({"decoder": "z1", "prior": {"logpdf": "-z**2/2", "x": 1}}, "exactly one key"),
        ({"decoder": "z1", "prior": {"logpdf": "-t.real"}}, "attribute"),
        ({"decoder": "z1", "prior": 3}, "expected a prior"),
        ({"decoder": "z1", "latents": [[True]]}, "boolean"),
        ({"decoder": "z1", "latents": [[math.nan]]}, "finite"),
        ({"decoder": "z1", "bogus": 1}, "unknown spec keys"),
        ({"decoder": "z1", "name": 3}, "name"),
    ],
)
def test_spec_refuses(data: dict, fragment: str) -> None:
    with pytest.raises(SpecError) as err:
        model_from_dict(data)
    assert fragment in str(err.value)


def test_spec_toml_errors() -> None:
    with pytest.raises(SpecError, match="malformed TOML"):
        loads_spec("decoder = [")
    with pytest.raises(SpecError, match="gamma2"):
        loads_spec('decoder = ["z1"]\ngamma2 = [nan]')
    with pytest.raises(SpecError, match="gamma2"):
        loads_spec('decoder = ["z1"]\ngamma2 = [-inf]')


def test_priors() -> None:
    t = PRIOR_VARIABLE
    g = parse_prior("gaussian(1, 4)")
    assert sp.simplify(g.logpdf - (-(t - 1) ** 2 / 8 - sp.log(8 * sp.pi) / 2)) == 0
    for label in ("gaussian", "logistic", "logistic(0.5, 2)", "student_t(5)"):
        p = parse_prior(label)
        assert p.normalized
        total = sp.Integral(sp.exp(p.logpdf), (t, -sp.oo, sp.oo)).evalf(20)
        assert abs(total - 1) < 1e-12, label
    c = parse_prior({"logpdf": "-z**4"})
    assert c.kind == "custom" and not c.normalized
    assert c.logpdf == -(t**4)
