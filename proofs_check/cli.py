"""The `gapcheck` command line (also `python -m proofs_check`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2


class UserError(Exception):
    """Bad input: printed as one line, exit status 2."""


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(o: Any) -> Any:
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def dumps_json(data: Any) -> str:
    """JSON without NaN/Infinity (allow_nan=False): a non-finite number is a bug, not output."""
    return json.dumps(data, indent=2, allow_nan=False, default=_json_default) + "\n"


def _fmt(v: float, width: int = 14) -> str:
    return f"{v:>{width}.10g}"


def format_table(ev) -> str:
    """A readable table of evaluate results."""
    lines = [
        f"model {ev.model.name!r}: d = {ev.model.d}, n = {ev.model.n}, prior {ev.model.prior_label}; "
        f"{len(ev.results)} evaluations in {ev.seconds:.2f} s on {ev.device}",
        "  gap = log p - ELBO*  (-> c_IMA as gamma^2 -> inf);  +/- are error estimates",
        "",
        f"{'latent z0':>22} {'gamma^2':>10} {'log p':>14} {'ELBO*':>14} {'gap':>14} {'+/-':>8} {'c_IMA':>12} {'L_IMA-ELBO*':>12}  flags",
    ]
    for r in ev.results:
        z = "(" + ", ".join(f"{v:.4g}" for v in r["latent"]) + ")"
        lines.append(
            f"{z:>22} {r['gamma2']:>10.3g} {_fmt(r['log_px'])} {_fmt(r['elbo_star'])} {_fmt(r['gap'])} "
            f"{r['error']['gap']:>8.1e} {r['c_ima']:>12.8f} {r['l_ima'] - r['elbo_star']:>12.3e}  {','.join(r['flags'])}"
        )
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from theory.spec import load_spec

    from .evaluate import evaluate_spec

    sym = load_spec(args.spec)
    ev = evaluate_spec(sym, device=args.device, predictions=not args.no_prediction)
    payload = {
        "model": {"name": sym.name, "d": sym.d, "n": sym.n, "decoder": [str(c) for c in sym.decoder], "prior": sym.prior_label},
        "device": ev.device,
        "seconds": ev.seconds,
        "results": ev.results,
    }
    text = dumps_json(payload)
    if args.json:
        if str(args.json) == "-":
            sys.stdout.write(text)
            return EXIT_OK
        write_atomic(Path(args.json), text)
    print(format_table(ev))
    if args.json:
        print(f"\nJSON written to {args.json}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gapcheck",
        description=(
            "Verify the theory of 'Embrace the Gap: VAEs perform Independent Mechanism Analysis': "
            "as the decoder precision gamma^2 grows, log p(x) - ELBO*(x) -> c_IMA(f, z0)."
        ),
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    ev = sub.add_parser(
        "evaluate",
        help="log p, ELBO*, the gap and c_IMA for a model spec (TOML)",
        description="Evaluate log p_gamma(x), ELBO*(x), their gap and c_IMA at x = f(z0) for every latent point "
        "and decoder precision of a TOML model spec (format: docs/spec.md).",
    )
    ev.add_argument("spec", type=Path, help="model spec (TOML)")
    ev.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT ('-' for stdout only); schema: docs/json.md")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device (default: auto = CUDA if available)")
    ev.add_argument("--no-prediction", action="store_true", help="skip the symbolic expansion (prediction) for each result")
    ev.set_defaults(func=cmd_evaluate)
    for name, mod in _EXTRA_COMMANDS:
        __import__(f"proofs_check.{mod}", fromlist=["register"]).register(sub)
    return p


#: Subcommands defined in other modules: (name, module with a ``register(subparsers)``).
_EXTRA_COMMANDS: list[tuple[str, str]] = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_INPUT
    from numerics.jacobian import SingularJacobianError
    from numerics.models import ModelError
    from numerics.optimize import ConvergenceError
    from theory.spec import SpecError

    try:
        return int(args.func(args))
    except (SpecError, ModelError, SingularJacobianError, UserError) as exc:
        print(f"gapcheck: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except (ConvergenceError, FloatingPointError) as exc:
        print(f"gapcheck: numerical failure: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print("gapcheck: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
