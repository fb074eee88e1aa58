"""proofs_check.certification and proofs_check.checks.certified: the sympy -> Arb translation, the
growth bounds behind the tail bounds, certified rows against the linear-Gaussian closed form
(theory.exact, evaluated in Arb by the same translator from its exact sympy expression), the
decimal output rounded outward, the "not certified" paths, the CLI pieces, and the
certified verify checks with their planted faults."""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from flint import acb, arb

from numerics.certified import NotCertified, working_precision
from proofs_check.certification import (
    Unbounded,
    add_certify_parser,
    cert_problem,
    certify_point,
    certify_spec,
    compile_arb,
    elbo_exprs,
    growth_bound,
    interval_strings,
    sympy_number_to_arb,
    to_arb,
)
from proofs_check.checks.certified import CERTIFIED_FAULTS, certified_checks
from proofs_check.cli import UserError
from proofs_check.context import Context, builtin_spec
from theory.exact import LinearGaussian
from theory.spec import PRIOR_VARIABLE, loads_spec, logistic_prior, student_t_prior

TARGET = 1e-15
z1, z2 = sp.symbols("z1 z2", real=True)

#: a cheap d = 1, n = 2 linear-Gaussian spec (closed form in theory.exact)
LIN1 = """
name = "lin1"
decoder = ["1.25*z1", "-0.5*z1"]
prior = "gaussian"
gamma2 = [100.0]
latents = [[0.75]]
"""


def _exact_fraction(a: arb) -> tuple[Fraction, Fraction]:
    """The exact end points of a ball as fractions (at a precision that cannot round them)."""
    with working_precision(4096):
        lo = a.lower().mid().man_exp()
        hi = a.upper().mid().man_exp()
    return Fraction(int(lo[0])) * Fraction(2) ** int(lo[1]), Fraction(int(hi[0])) * Fraction(2) ** int(hi[1])


# ---------------------------------------------------------------------------------------
# translation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        z1 + sp.Rational(2, 5) * z2**2,
        sp.tanh(sp.Rational(6, 25) * z2 + sp.Rational(1, 100)) * z1 - 3,
        10 * (z1 - 3) / ((z1 - 3) ** 2 + z2**2),
        sp.log(1 + sp.exp(-z1)) + sp.sqrt(1 + z2**2) + sp.atan(z1 * z2) + sp.erf(z2) + sp.asinh(z1),
        sp.exp(z1) ** sp.Rational(3, 2) + sp.Abs(z2) * sp.pi + sp.cos(z1) * sp.sin(z2) - sp.loggamma(sp.Rational(5, 2)),
    ],
)
def test_translation_encloses_sympy(expr: sp.Expr) -> None:
    rng = np.random.default_rng(0)
    with working_precision(128):  # constants are evaluated at the precision of compilation
        fn = to_arb(expr, [z1, z2])
    for _ in range(5):
        p = [sp.Rational(int(v * 1000), 1000) for v in rng.uniform(-2, 2, size=2)]
        ref = sp.N(expr.subs({z1: p[0], z2: p[1]}), 40)
        with working_precision(128):
            ball = fn([sympy_number_to_arb(p[0]), sympy_number_to_arb(p[1])])
            assert ball.contains(arb(str(ref))) or ball.overlaps(arb(str(ref))), (expr, p, ball, ref)
            assert ball.rad() < 1e-30


def test_numbers_are_exact() -> None:
    with working_precision(64):
        f = sympy_number_to_arb(sp.Float(0.1))
        assert f.is_exact() and Fraction(0.1) == _exact_fraction(f)[0]
        assert sympy_number_to_arb(sp.Rational(3, 8)).is_exact()
        assert sympy_number_to_arb(sp.Integer(-7)).is_exact()
        assert sympy_number_to_arb(sp.pi).contains(arb.pi())


def test_branch_cuts_are_guarded_on_complex_balls() -> None:
    """A complex ball touching a branch cut (or the kink of |t|) gives a non-finite value,
    as the rigorous integrator requires; on the real line the value is ordinary."""
    with working_precision(64):
        for e in (sp.log(z1), sp.sqrt(z1), sp.Abs(z1), sp.atan(z1 * 4), z1 ** sp.Rational(1, 3)):
            fn = to_arb(e, [z1])
            bad = acb(arb(-1, 0.1), arb(0, 0.5)) if e != sp.atan(z1 * 4) else acb(arb(0, 0.1), arb(0.5, 0.2))
            if isinstance(e, sp.Abs):
                bad = acb(arb(0, 0.1), arb(0, 0.1))
            val = fn([bad])
            assert not (val.real.is_finite() and val.imag.is_finite()), e
        assert to_arb(sp.log(z1), [z1])([arb(2)]).contains(arb(2).log())


def test_cse_program_matches_separate_translation() -> None:
    exprs = [sp.tanh(z1 + z2) * z1, sp.tanh(z1 + z2) ** 2 + sp.exp(z2), sp.Integer(3)]
    prog = compile_arb(exprs, [z1, z2])
    with working_precision(96):
        args = [arb("0.3"), arb("-1.2")]
        for e, v in zip(exprs, prog(args)):
            assert v.overlaps(to_arb(e, [z1, z2])(args))


# ---------------------------------------------------------------------------------------
# growth bounds
# ---------------------------------------------------------------------------------------


def _check_growth(expr: sp.Expr, syms: list[sp.Symbol]) -> None:
    P = [float(c.upper()) for c in growth_bound(expr, syms)]
    f = sp.lambdify(syms, expr, "mpmath")
    rng = np.random.default_rng(1)
    for scale in (0.5, 3.0, 30.0):
        for _ in range(30):
            z = rng.uniform(-scale, scale, size=len(syms))
            r = float(np.max(np.abs(z)))
            assert abs(float(f(*[float(v) for v in z]))) <= sum(c * r**j for j, c in enumerate(P)) * (1 + 1e-12), (expr, z)


@pytest.mark.parametrize("k", range(5))
def test_growth_bounds_of_prior_derivatives(k: int) -> None:
    t = PRIOR_VARIABLE
    for prior in (logistic_prior(), logistic_prior(sp.Rational(1, 2), sp.Integer(2)), student_t_prior(sp.Integer(5))):
        _check_growth(sp.diff(prior.logpdf, t, k), [t])


@pytest.mark.parametrize("name", ["triangular", "mlp", "embedding", "ima", "mobius"])
def test_growth_bounds_of_decoders(name: str) -> None:
    sym = builtin_spec(name)
    for c in sym.decoder:
        _check_growth(c, list(sym.latents))
        _check_growth(sp.diff(c, sym.latents[0], 2), list(sym.latents))


def test_growth_bound_refuses_a_pole() -> None:
    with pytest.raises(Unbounded, match="pole|bounded away"):
        growth_bound(10 * (z1 - 3) / ((z1 - 3) ** 2 + z2**2), [z1, z2])
    with pytest.raises(Unbounded):
        growth_bound(sp.exp(z1), [z1])
    assert [float(c) for c in growth_bound(sp.exp(-z1**2), [z1])] == [1.0]


# ---------------------------------------------------------------------------------------
# certified rows against the closed form
# ---------------------------------------------------------------------------------------


def _closed_form_balls(A, z0, gamma2: float):
    lg = LinearGaussian.from_lists(A)
    eps = sp.Rational(1) / sp.Rational(gamma2)
    z0 = [sp.Rational(str(v)) for v in z0]
    with working_precision(256):
        lp = to_arb(lg.log_px_reduced(z0, eps), [])([])
        es = to_arb(lg.elbo_star_reduced(z0, eps), [])([])
        gap = to_arb(lg.gap(eps), [])([])
        c = to_arb(lg.c_ima(), [])([])
    return lp, es, gap, c


def _check_row(row, lp, es, gap, c) -> None:
    assert all(s == "certified" for s in row.status.values()), row.status
    for key, ref in (("log_px_red", lp), ("elbo_star_red", es), ("gap", gap), ("c_ima", c)):
        ball = row.balls[key]
        assert ball.overlaps(ref) and (ball.contains(ref) or ref.rad() > 0), (key, ball, ref)
        assert ball.rad() <= TARGET * (1 + abs(float(ball.mid()))), (key, ball)
    # the decimal strings contain the ball
    for q in ("log_px", "elbo_star", "gap", "c_ima"):
        lo, hi = _exact_fraction(row.balls[q])
        assert Fraction(row.intervals[q]["lo"]) <= lo and hi <= Fraction(row.intervals[q]["hi"])


def test_certify_point_linear_d1_closed_form() -> None:
    sym = loads_spec(LIN1)
    row = certify_point(sym, sym.points[0], 100.0)
    _check_row(row, *_closed_form_balls([[1.25], [-0.5]], [0.75], 100.0))


@pytest.mark.slow
@pytest.mark.parametrize("gamma2", [1.0, 1e2, 1e4, 1e6])
def test_certify_point_linear_builtin_closed_form(gamma2: float) -> None:
    sym = builtin_spec("linear")
    row = certify_point(sym, sym.points[0], gamma2)
    _check_row(row, *_closed_form_balls([[1, 0.5], [0.2, 1.3]], [0.3, -0.7], gamma2))


def test_certify_point_fullcov_linear_closed_form() -> None:
    """The 2-D linear-Gaussian built-in: its posterior is Gaussian, so the full-covariance
    ELBO* equals log p (THEORY C1 with KL = 0, C14): the certified full-covariance ELBO*
    ball contains the closed-form log p, the gap_fullcov ball contains 0, both tiny; the
    mean-field quantities keep their closed forms."""
    sym = builtin_spec("linear")
    row = certify_point(sym, sym.points[0], 100.0, full_cov=True)
    lp, es, gap, c = _closed_form_balls([[1, 0.5], [0.2, 1.3]], [0.3, -0.7], 100.0)
    _check_row(row, lp, es, gap, c)
    assert row.status["elbo_star_fullcov"] == "certified" and row.status["gap_fullcov"] == "certified", row.status
    assert row.balls["elbo_star_fullcov_red"].overlaps(lp)
    assert row.balls["gap_fullcov"].contains(arb(0))
    for q in ("elbo_star_fullcov", "gap_fullcov"):
        assert row.balls[q].rad() <= TARGET * (1 + abs(float(row.balls[q].mid()))), q
    assert "cov_star" in row.details["elbo_star_fullcov"]
    assert set(row.to_dict()) >= {"elbo_star_fullcov", "gap_fullcov"}
    # without full_cov the row has neither
    assert "elbo_star_fullcov" not in certify_point(sym, sym.points[0], 100.0).to_dict()


def test_interval_strings_round_outward() -> None:
    with working_precision(128):
        for a in (arb(1) / 3, -arb.pi() * 10**7, arb(2) ** -80, arb("1.5 +/- 1e-30"), arb(0)):
            iv = interval_strings(a, digits=17)
            lo, hi = _exact_fraction(a)
            assert Fraction(iv["lo"]) <= lo and hi <= Fraction(iv["hi"]), (a, iv)
            assert Fraction(iv["hi"]) - Fraction(iv["lo"]) <= abs(Fraction(iv["hi"])) * Fraction(1, 10**15) + (hi - lo) + Fraction(1, 10**30)


# ---------------------------------------------------------------------------------------
# "not certified" paths
# ---------------------------------------------------------------------------------------


def test_not_certified_custom_prior_and_d3() -> None:
    spec = LIN1.replace('prior = "gaussian"', 'prior = {logpdf = "-z**2/2"}')
    sym = loads_spec(spec)
    row = certify_point(sym, sym.points[0], 100.0, hints={"modes": [[0.75]], "scales": [[[0.07]]], "mu": [0.75], "s": [0.005]})
    assert row.status["log_px"].startswith("not certified") and "custom prior" in row.status["log_px"]
    assert row.status["elbo_star"].startswith("not certified")
    assert row.status["gap"].startswith("not certified")
    assert row.status["c_ima"] == "certified" and row.intervals["log_px"] is None
    sym3 = loads_spec('decoder = ["z1", "z2", "z3"]\ngamma2 = [1.0]\nlatents = [[0, 0, 0]]\n')
    row3 = certify_point(sym3, sym3.points[0], 1.0)
    assert "d <= 2" in row3.status["log_px"] and row3.status["c_ima"] == "certified"


#: The old built-in Möbius decoder, the plane map w ↦ 10/(w − 3): a pole at z = (3, 0) in the
#: latent plane (docs/theory.md, C12).
POLE_MOBIUS = """
name = "mobius_pole"
decoder = ["10*(z1 - 3)/((z1 - 3)**2 + z2**2)", "-10*z2/((z1 - 3)**2 + z2**2)"]
prior = "logistic"
gamma2 = [1e4]
latents = [[0.5, 0.7]]
"""


def test_not_certified_elbo_with_a_pole() -> None:
    """A decoder with a pole in the latent plane (the old Möbius map): E_q‖x − f(z)‖²
    diverges for every Gaussian q (∫ r⁻² r dr near the pole), so no tail bound exists and the
    ELBO is refused; certify_point then says "not certified" for ELBO* and the gap while
    log p (finite: the likelihood factor is at most 1) is still certified."""
    sym = loads_spec(POLE_MOBIUS)
    with working_precision(64):
        prob = cert_problem(sym, sym.points[0], 1e4, 64)
        with pytest.raises(NotCertified, match="tail bound"):
            elbo_exprs(sym, prob)
    # hints as the fast path gives them (mode z0, Laplace scale |J|^-1 / γ, |J| = 10/|w0 − 3|²)
    scale = ((2.5**2 + 0.7**2) / 10) / 100
    hints = {"modes": [[0.5, 0.7]], "scales": [[[scale, 0.0], [0.0, scale]]], "mu": [0.5, 0.7], "s": [scale**2] * 2}
    row = certify_point(sym, sym.points[0], 1e4, hints=hints)
    assert row.status["log_px"] == "certified", row.status
    assert row.status["elbo_star"].startswith("not certified") and "tail bound" in row.status["elbo_star"]
    assert row.status["gap"].startswith("not certified")
    assert row.intervals["elbo_star"] is None and row.intervals["gap"] is None


# ---------------------------------------------------------------------------------------
# CLI pieces
# ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gapcheck")
    add_certify_parser(p.add_subparsers(dest="command"))
    return p


def test_cmd_certify_json(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "lin1.toml"
    spec.write_text(LIN1)
    out = tmp_path / "cert.json"
    args = _parser().parse_args(["certify", str(spec), "--json", str(out), "--no-progress"])
    assert args.func(args) == 0
    data = json.loads(out.read_text())
    assert data["model"]["d"] == 1 and len(data["rows"]) == 1
    row = data["rows"][0]
    assert row["latent"] == [0.75] and row["gamma2"] == 100.0
    for q in ("log_px", "elbo_star", "gap", "c_ima", "elbo_star_fullcov", "gap_fullcov"):
        assert isinstance(row[q]["lo"], str) and Fraction(row[q]["lo"]) <= Fraction(row[q]["hi"])
        assert row["status"][q] == "certified"
    assert "elbo_star_fullcov" in capsys.readouterr().out
    # --no-full-cov leaves the full-covariance quantities out
    args = _parser().parse_args(["certify", str(spec), "--json", str(out), "--no-progress", "--no-full-cov"])
    assert args.func(args) == 0
    assert "elbo_star_fullcov" not in json.loads(out.read_text())["rows"][0]


def test_cmd_certify_bad_precision(tmp_path: Path) -> None:
    spec = tmp_path / "lin1.toml"
    spec.write_text(LIN1)
    args = _parser().parse_args(["certify", str(spec), "--prec", "8"])
    with pytest.raises(UserError, match="prec"):
        args.func(args)


def test_certify_spec_rows_in_order() -> None:
    sym = loads_spec(LIN1.replace("gamma2 = [100.0]", "gamma2 = [1.0, 1e4]"))
    rows = certify_spec(sym, progress=False)
    assert [(r.latent, r.gamma2) for r in rows] == [([0.75], 1.0), ([0.75], 1e4)]
    assert all(r.seconds > 0 for r in rows)


# ---------------------------------------------------------------------------------------
# certified evidence for verify
# ---------------------------------------------------------------------------------------


def _tiny_context() -> Context:
    ctx = Context(mode="quick", device="cpu")
    ctx.cache[("sym", "lin1")] = loads_spec(LIN1)
    return ctx


def test_certified_checks_pass_and_faults_are_rejected() -> None:
    ctx = _tiny_context()
    res = certified_checks(ctx, None, cases=[("lin1", 0, 100.0)])
    assert res and all(r.passed for r in res), [r.to_dict() for r in res if not r.passed]
    for fault in CERTIFIED_FAULTS:
        fres = certified_checks(ctx, fault, cases=[("lin1", 0, 100.0)])
        failed = [r.name for r in fres if not r.passed]
        assert failed, fault
        quantity = fault.split("1e-10_")[1]
        assert any(quantity in n for n in failed), (fault, failed)


@pytest.mark.slow
def test_certified_checks_default_set() -> None:
    ctx = Context(mode="default", device="cpu")
    res = certified_checks(ctx, None)
    assert res and all(r.passed for r in res), [r.to_dict() for r in res if not r.passed]
    for fault in CERTIFIED_FAULTS:
        assert any(not r.passed for r in certified_checks(ctx, fault))


@pytest.mark.slow
@pytest.mark.parametrize("name,gamma2", [("triangular", 1e2), ("mobius", 1.0)])
def test_fast_fullcov_elbo_star_meets_its_certified_ball(name: str, gamma2: float) -> None:
    """numerics.elbo.elbo_star_fullcov (the fast path of C14) against the certified
    full-covariance ELBO*: the proven actual error (largest distance to the ball) is at most
    the fast path's stated error, and the certified gap_fullcov is smaller than the
    mean-field gap (a richer family can only raise the local maximum here)."""
    from numerics.elbo import elbo_star_fullcov
    from numerics.posterior import find_modes
    from proofs_check.bridge import numeric_model, point_tensor

    sym = builtin_spec(name)
    row = certify_point(sym, sym.points[0], gamma2, full_cov=True)
    assert row.status["elbo_star_fullcov"] == "certified", row.status
    model = numeric_model(sym)
    z0 = point_tensor(sym.points[0])
    pm = find_modes(model, model.decoder(z0.unsqueeze(0)), [gamma2], z0.unsqueeze(0))[0]
    fast = elbo_star_fullcov(model, [pm])[0]
    ball = row.balls["elbo_star_fullcov_red"]
    with working_precision(256):
        v = arb(fast.value)
        far = max(float(abs(v - arb(ball.lower())).upper()), float(abs(arb(ball.upper()) - v).upper()))
    assert far <= fast.error, (fast.value, fast.error, ball)
    assert row.balls["gap_fullcov"].upper() < row.balls["gap"].lower()
