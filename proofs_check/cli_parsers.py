"""The argument parsers of `gapcheck experiment` and `gapcheck certify`, kept apart from the
commands themselves so that building the CLI parser imports neither torch nor python-flint
(`gapcheck --help` and argument errors answer at once; `gapcheck evaluate --workers N` starts its
cluster before this process imports the numeric stack).  The commands are imported when run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: The experiments of proofs_check.experiments.EXPERIMENTS, in order (a test holds the two equal).
EXPERIMENT_NAMES: tuple[str, ...] = ("E1", "E2", "E3", "E4", "E5")


def _cmd_experiment(args: argparse.Namespace) -> int:
    from .experiments import cmd_experiment

    return cmd_experiment(args)


def _cmd_certify(args: argparse.Namespace) -> int:
    from .certification import cmd_certify

    return cmd_certify(args)


def add_experiment_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `gapcheck experiment [NAME …] [--quick|--full] [--device] [--seeds N] [--out DIR]`."""
    ex = subparsers.add_parser(
        "experiment",
        help="train VAEs (the paper's experiments E1-E5) and score them against the exact ELBO* and log p",
        description="Train amortized VAEs as in the paper's experiments and hold them against the exact optimum: "
        "E1 amortization gap, E2 self-consistency, E3 MCC vs gamma^2, E4 MCC vs c_IMA, E5 spurious rotations. "
        "Writes results.json (schema: docs/experiments.md), report.md and figures to --out; an interrupted run "
        "resumes from the checkpoints in --out/checkpoints.",
    )
    ex.add_argument("names", nargs="*", metavar="NAME", help=f"experiments to run (default: all of {', '.join(EXPERIMENT_NAMES)})")
    size = ex.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick", help="2-D models, small nets, 3 seeds (default; minutes on a CPU)")
    size.add_argument("--full", action="store_const", dest="mode", const="full", help="the paper's gamma^2 grid and more seeds (meant for a GPU)")
    size.add_argument("--tiny", action="store_const", dest="mode", const="tiny", help=argparse.SUPPRESS)
    ex.set_defaults(mode="quick")
    ex.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device (default: auto)")
    ex.add_argument("--seeds", type=int, default=None, help="number of model seeds (default: 3 quick, 10 full)")
    ex.add_argument("--out", metavar="DIR", type=Path, default=Path("gapcheck-experiments"), help="output folder (default: ./gapcheck-experiments)")
    ex.add_argument("--no-plots", action="store_true", help="skip the figures")
    ex.add_argument("--no-progress", action="store_true", help="no progress bars")
    ex.set_defaults(func=_cmd_experiment)
    return ex


def add_certify_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`gapcheck certify SPEC [--prec BITS] [--json PATH]`."""
    ce = subparsers.add_parser(
        "certify",
        help="proven enclosures (ball arithmetic) of log p, ELBO* (mean-field, full covariance), the gap and c_IMA, d <= 2",
        description="Certify, with rigorous ball arithmetic (Arb via python-flint), intervals that provably contain "
        "log p_gamma(x), ELBO*(x) (mean-field and full-covariance Gaussian encoders), the gaps and c_IMA at x = f(z0) "
        "for every latent point and decoder "
        "precision of a TOML model spec with d <= 2 latents. Each quantity is an interval of decimal strings rounded "
        "outward, with a status: certified, lower/upper bound only, or not certified with the reason. Method and "
        "assumptions: docs/certified.md.",
    )
    ce.add_argument("spec", type=Path, help="model spec (TOML)")
    ce.add_argument("--prec", type=int, metavar="BITS", default=None,
                    help="working precision in bits (default: chosen per gamma^2, raised when needed)")
    ce.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH ('-' for stdout only)")
    ce.add_argument("--full-cov", action=argparse.BooleanOptionalAction, default=True,
                    help="also certify ELBO* of the full-covariance Gaussian encoder and its gap (default: on; "
                    "--no-full-cov skips it, about halving the ELBO* work)")
    ce.add_argument("--no-progress", action="store_true", help="no progress bar")
    ce.set_defaults(func=_cmd_certify)
    return ce
