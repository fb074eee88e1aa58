"""The `gapcheck` command line (also `python -m proofs_check`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .runtime import UserError, current_umask, default_threads, gapcheck_version

EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2


def check_output_file(path: Path, inputs: Sequence[Path] = (), option: str = "--json") -> None:
    """Refuse, before any computation, an output file that cannot be written or would destroy
    an input: a folder, a special file (/dev, /proc, /sys), an unwritable folder, or an input
    file itself (e.g. ``--json spec.toml``)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise UserError(f"{option} {path}: exists and is not a regular file")
    for src in inputs:
        if path.exists() and Path(src).exists() and os.path.samefile(path, src):
            raise UserError(f"{option} {path}: that is the input spec; refusing to overwrite it")
    parent = path.resolve().parent
    for special in ("/proc", "/sys", "/dev"):
        if str(parent) == special or str(parent).startswith(special + "/"):
            raise UserError(f"{option} {path}: cannot write a report into {special}")
    if parent.exists() and not (parent.is_dir() and os.access(parent, os.W_OK)):
        raise UserError(f"{option} {path}: cannot write into {parent}")



def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename: never a half-written file.
    The file gets the permissions of an ordinary new file (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~current_umask())
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
        z = "(" + ", ".join(f"{v:.4g}" for v in r.latent) + ")"
        lines.append(
            f"{z:>22} {r.gamma2:>10.3g} {_fmt(r.log_px.value)} {_fmt(r.elbo_star.value)} {_fmt(r.gap.value)} "
            f"{r.gap.error:>8.1e} {r.c_ima:>12.8f} {r.l_ima - r.elbo_star.value:>12.3e}  {','.join(r.flags)}"
        )
    return "\n".join(lines)


#: With --jsonl, specs with more evaluations than this are not tabulated: their rows are streamed
#: to the file and not kept in memory (a summary line replaces the table).
TABLE_MAX_ROWS = 1000
#: Rows that the table or --json may hold in memory (~4 KB each); more need --jsonl.
MAX_KEPT_ROWS = 100_000


def format_summary(ev, stats: dict[str, Any], path: str) -> str:
    """One paragraph for a spec whose rows were streamed to ``path`` and not kept."""
    flags = ", ".join(f"{k} x{v}" for k, v in sorted(stats["flags"].items())) or "none"
    lines = [
        f"model {ev.model.name!r}: d = {ev.model.d}, n = {ev.model.n}, prior {ev.model.prior_label}; "
        f"{ev.n_results} evaluations in {ev.seconds:.2f} s on {ev.device}",
        f"  rows streamed to {path} (more than {TABLE_MAX_ROWS}: not tabulated, not kept in memory); "
        f"gap from {stats['gap_min']:.10g} to {stats['gap_max']:.10g}, largest error bar {stats['err_max']:.1e}; "
        f"flags: {flags}",
    ]
    if stats["skipped"]:
        lines.append(f"  prediction skipped for {stats['skipped']} rows: {stats['skip_reason']}")
    return "\n".join(lines)


def _memory_size(text: str) -> int:
    """argparse type of --max-memory: bytes from 2G, 500M, ... (numerics.memsize.parse_memory,
    which imports no torch: the arguments are read before the numeric stack is imported)."""
    from numerics.memsize import parse_memory

    try:
        return parse_memory(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from theory.spec import load_spec

    from .evaluation import evaluate_spec, result_row

    specs = list(args.spec)
    if args.json and len(specs) > 1:
        raise UserError("--json takes one spec; for several specs use --jsonl OUT (one JSON object per result)")
    if args.json and str(args.json) != "-":
        check_output_file(Path(args.json), specs)
    if args.jsonl:
        check_output_file(Path(args.jsonl), specs, option="--jsonl")
    if args.samples < 2:
        raise UserError("--samples must be at least 2")
    models = [load_spec(p) for p in specs]  # every spec parsed (and refused) before any computation
    for path, sym in zip(specs, models):
        rows = len(sym.points) * max(1, len(sym.gamma2))
        if rows > MAX_KEPT_ROWS and (args.json or not args.jsonl):
            raise UserError(f"{path}: {rows} evaluations: more than {MAX_KEPT_ROWS} rows are only written as JSON Lines "
                            "(--jsonl OUT streams them to a file without keeping them in memory)"
                            + ("; --json holds every row in one document" if args.json else ""))
    stream = open(args.jsonl, "w", encoding="utf-8") if args.jsonl else None  # noqa: SIM115 (closed below)
    sweep = None
    try:
        sweep = _spec_sweep(args, specs, models)  # None: serial; else the specs computing on a Dask cluster
        for path, sym in zip(specs, models):
            rows = len(sym.points) * max(1, len(sym.gamma2))
            keep = bool(args.json) or stream is None or rows <= TABLE_MAX_ROWS
            stats: dict[str, Any] = {"flags": {}, "gap_min": float("inf"), "gap_max": float("-inf"), "err_max": 0.0,
                                     "skipped": 0, "skip_reason": ""}

            def emit(r, path=path, sym=sym, stats=stats) -> None:
                if stream is not None:
                    row = {"spec": str(path), "model": sym.name, **result_row(r)}
                    stream.write(json.dumps(row, allow_nan=False) + "\n")
                    stream.flush()
                stats["gap_min"] = min(stats["gap_min"], r.gap.value)
                stats["gap_max"] = max(stats["gap_max"], r.gap.value)
                stats["err_max"] = max(stats["err_max"], r.gap.error)
                for f in r.flags:
                    stats["flags"][f] = stats["flags"].get(f, 0) + 1
                if getattr(r, "prediction_skipped", None):
                    stats["skipped"] += 1
                    stats["skip_reason"] = r.prediction_skipped

            big = rows > 64 or sym.d > 3
            if sweep is not None:
                ev = sweep.next_result(on_result=emit, keep_results=keep)
            else:
                ev = evaluate_spec(sym, **_evaluate_options(args), progress=big and not args.no_progress, on_result=emit,
                                   keep_results=keep)
            if args.json:
                text = dumps_json(ev.to_dict())
                if str(args.json) == "-":
                    sys.stdout.write(text)
                    return EXIT_OK
                write_atomic(Path(args.json), text)
            if keep:
                print(format_table(ev))
                if stats["skipped"]:
                    print(f"  prediction skipped: {stats['skip_reason']}")
            else:
                print(format_summary(ev, stats, str(args.jsonl)))
            if len(specs) > 1:
                print()
    finally:
        if stream is not None:
            stream.close()
        if sweep is not None:
            sweep.close()
    if args.json:
        print(f"\nJSON written to {args.json}")
    if args.jsonl:
        print(f"JSON Lines written to {args.jsonl}")
    return EXIT_OK


def _evaluate_options(args: argparse.Namespace) -> dict[str, Any]:
    """evaluate_spec's options from `gapcheck evaluate`'s arguments (the serial and the Dask run)."""
    return {"device": args.device, "predictions": not args.no_prediction, "log_px_method": args.log_px_method,
            "is_samples": args.samples, "seed": args.seed, "elbo_method": args.elbo_method, "max_memory": args.max_memory}


def _cluster(args: argparse.Namespace):
    """The Dask cluster of --workers / --scheduler (the one :func:`main` started in the
    background, a distributed.ClientStart, once it exists), or None (serial)."""
    started = getattr(args, "cluster_start", None)
    if started is not None:
        return started
    from .distributed import Cluster

    return Cluster.from_options(getattr(args, "workers", None), getattr(args, "scheduler", None))


def _spec_sweep(args: argparse.Namespace, specs: Sequence[Path], models: Sequence[Any]):
    """With --workers / --scheduler: every spec's tasks submitted to the cluster (distributed.SpecSweep)."""
    cluster = _cluster(args)
    if cluster is None:
        return None
    from .distributed import SpecSource, SpecSweep

    return SpecSweep([(SpecSource.from_path(p), m) for p, m in zip(specs, models)], _evaluate_options(args), cluster,
                     progress=not args.no_progress)


def _add_cluster_options(parser: argparse.ArgumentParser, what: str) -> None:
    grp = parser.add_mutually_exclusive_group()
    grp.add_argument("--workers", type=int, metavar="N",
                     help=f"{what} on a local Dask cluster of N worker processes (one torch thread each); "
                     "results identical to the serial run; needs pip install 'gapcheck[dask]' (docs/distributed.md)")
    grp.add_argument("--scheduler", metavar="ADDRESS",
                     help=f"{what} on an existing Dask cluster (`dask scheduler`, `dask worker ADDRESS --nthreads 1`), "
                     "e.g. tcp://10.0.0.5:8786; every worker needs the same gapcheck and torch")


def cmd_verify(args: argparse.Namespace) -> int:
    from .verification import check_report_dir, run_verify, write_report

    ids = args.claims.split(",") if args.claims else None
    out = Path(args.out)
    try:
        check_report_dir(out)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        report, ctx = run_verify(ids, mode=args.mode, seed=args.seed, device=args.device, show_progress=not args.no_progress,
                                 cluster=_cluster(args))
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None
    figures = write_report(report, ctx, out, plots=not args.no_plots, progress=not args.no_progress)
    s = report["summary"]
    for e in report["claims"]:
        nc = e["negative_controls"]
        mark = "ok  " if e["status"] == "passed" and e["all_faults_rejected"] else "FAIL"
        print(f"{mark} {e['id']:>3} {e['title']:<40} {e['status']:<7} evidence: {', '.join(e['evidence']):<42} "
              f"faults rejected {sum(c['rejected'] for c in nc)}/{len(nc)}  ({e['seconds']:.1f} s)")
    print(f"\n{s['passed']}/{s['claims']} claims passed, {s['faults_planted'] - len(s['faults_accepted'])}/{s['faults_planted']} "
          f"planted faults rejected in {report['seconds']:.1f} s ({report['mode']} mode, device {report['device']}).")
    if s["failed"]:
        print(f"FAILED claims: {', '.join(s['failed'])}")
    if s["faults_accepted"]:
        print(f"ACCEPTED planted faults: {', '.join(s['faults_accepted'])}")
    print(f"Report: {out / 'report.md'} and {out / 'report.json'}" + (f"; {len(figures)} figures" if figures else ""))
    return EXIT_OK if report["passed"] else EXIT_FAIL


def cmd_derive(args: argparse.Namespace) -> int:
    from theory.report import derivation_text
    from theory.spec import load_spec

    if args.out:
        check_output_file(Path(args.out), [args.spec], option="--out")
    sym = load_spec(args.spec)
    points = list(sym.points) or [None]
    chunks = [derivation_text(sym, point=p, latex=args.latex) for p in points]
    text = "\n\n".join(chunks) + "\n"
    if args.out:
        write_atomic(Path(args.out), text)
        print(f"written to {args.out}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_claims(args: argparse.Namespace) -> int:
    from .checks import all_claims

    claims = all_claims()
    if args.json:
        sys.stdout.write(dumps_json([c.summary() for c in claims]))
        return EXIT_OK
    if args.markdown:
        status: dict[str, Any] = {}
        if args.report:
            try:
                rep = json.loads(Path(args.report).read_text(encoding="utf-8"))
                status = {e["id"]: e for e in rep["claims"]}
                header = f"Status from `{args.report}` ({rep['mode']} mode, seed {rep['seed']}, {rep['seconds']:.0f} s, torch {rep['platform']['torch']})."
            except (OSError, ValueError, KeyError) as exc:
                raise UserError(f"cannot read report {args.report}: {exc}") from None
        else:
            header = "Status: run `gapcheck verify` and pass `--report gapcheck-report/report.json`."
        lines = ["# Claims checked by gapcheck", "", "Generated by `gapcheck claims --markdown`. " + header, "",
                 "| claim | statement | paper | evidence | planted faults (rejected) | status |", "|---|---|---|---|---|---|"]
        for c in claims:
            e = status.get(c.id)
            ev = ", ".join(e["evidence"]) if e else "—"
            faults = ", ".join(f"`{nc['fault']}`" + (" ✓" if nc["rejected"] else " ✗") for nc in e["negative_controls"]) if e else ", ".join(f"`{f}`" for f in c.faults)
            st = e["status"] if e else "—"
            lines.append(f"| **{c.id}** {c.title} | {c.statement.replace('|', chr(92) + '|')} | {c.paper} | {ev} | {faults} | {st} |")
        sys.stdout.write("\n".join(lines) + "\n")
        return EXIT_OK
    for c in claims:
        print(f"{c.id:>3}  [{c.kind:<10}] {c.title}")
        print(f"      {c.statement}")
        print(f"      paper: {c.paper}; models: {', '.join(c.models) or '-'}; planted faults: {', '.join(c.faults)}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gapcheck",
        description=(
            "Verify the theory of 'Embrace the Gap: VAEs perform Independent Mechanism Analysis': "
            "as the decoder precision gamma^2 grows, log p(x) - ELBO*(x) -> c_IMA(f, z0)."
        ),
    )
    p.add_argument("--version", action="version", version=f"gapcheck {gapcheck_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    ev = sub.add_parser(
        "evaluate",
        help="log p, ELBO*, the gap and c_IMA for a model spec (TOML)",
        description="Evaluate log p_gamma(x), ELBO*(x), their gap and c_IMA at x = f(z0) for every latent point "
        "and decoder precision of one or more TOML model specs (format: docs/spec.md).",
    )
    ev.add_argument("spec", type=Path, nargs="+", help="model spec(s) (TOML); several are evaluated in one process")
    ev.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT ('-' for stdout only; one spec); schema: docs/json.md")
    ev.add_argument("--jsonl", metavar="OUT", help="stream every result as one JSON object per line to OUT as soon as it is computed "
                    "(several specs; an interrupted run keeps what it finished); rows as in docs/json.md plus 'spec' and 'model'")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar (shown for specs with more than 64 evaluations)")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device (default: auto = CUDA if available)")
    ev.add_argument("--no-prediction", action="store_true", help="skip the symbolic expansion (prediction) for each result")
    ev.add_argument("--log-px-method", choices=["auto", "gh", "sparse", "is"], default="auto",
                    help="log p by: gh = tensor Gauss-Hermite quadrature (error ~1e-13 where it converges, nodes grow as K^d: "
                    "d <= 8); sparse = Smolyak sparse-grid quadrature (nodes grow like (2d)^L/L!); is = randomized "
                    "quasi-Monte Carlo importance sampling from the Laplace approximation (error = one standard error "
                    "over 16 scrambled replicates, cost linear in d and in --samples); auto (default) = gh for d <= 3, "
                    "else sparse, and is where the sparse levels do not converge and sampling is more accurate. The method used is "
                    "reported per row")
    ev.add_argument("--elbo-method", choices=["auto", "tensor", "sparse"], default="auto",
                    help="ELBO* by Newton on a tensor Gauss-Hermite rule (nodes grow as K^d: d <= 8) or on a sparse grid "
                    "(d up to ~30); auto (default) = tensor for d <= 3, else sparse")
    ev.add_argument("--max-memory", metavar="SIZE", type=_memory_size, default=None,
                    help="memory budget of the quadrature and sampling sums, e.g. 2G or 500M (default 1G); node sums run "
                    "in chunks that fit it, and a request that cannot fit is refused (exit 2) naming a method that would")
    ev.add_argument("--samples", type=int, default=65536, help="importance-sampling draws per log p for --log-px-method is "
                    "or auto (in all: 16 replicates of the largest power of 2 that fits; default 65536)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the importance sampler (default 0)")
    _add_cluster_options(ev, "evaluate the specs (and chunks of their points)")
    ev.set_defaults(func=cmd_evaluate)

    ve = sub.add_parser(
        "verify",
        help="check every claim of docs/theory.md (C1-C17, N1-N2) and write a report",
        description="Check the claims of docs/theory.md with symbolic, numerical (error bars, fitted convergence orders) and "
        "property-based evidence; plant a fault for each claim and require that it is rejected. Writes report.md, "
        "report.json and figures (PNG and SVG) to --out. Exits 1 when a claim fails or a planted fault is accepted.",
    )
    size = ve.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick", help="smaller sweeps and samples (under a minute)")
    size.add_argument("--full", action="store_const", dest="mode", const="full", help="denser gamma^2 sweeps (quarter decades) and more samples (a few minutes)")
    ve.set_defaults(mode="default")
    ve.add_argument("--claims", metavar="IDS", help="comma-separated claim ids to check, e.g. C9,C11 (default: all)")
    ve.add_argument("--out", metavar="DIR", type=Path, default=Path("gapcheck-report"), help="output folder (default: ./gapcheck-report)")
    ve.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device (default: auto)")
    ve.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo and prior samples (default: 0); hypothesis runs are derandomized")
    ve.add_argument("--no-plots", action="store_true", help="skip the figures")
    ve.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_cluster_options(ve, "check the claims")
    ve.set_defaults(func=cmd_verify)

    de = sub.add_parser(
        "derive",
        help="symbolic eps-expansions of the gap, mu*, s*, log p and ELBO* for a model spec",
        description="Derive with sympy, at each latent point of the spec (or at a symbolic z0 when the spec has none): "
        "gap = c_IMA + a1*eps + O(eps^2), mu* = z0 + mu1*eps, s* = s1*eps + s2*eps^2, and the reduced log p and ELBO* "
        "to O(eps) (eps = 1/gamma^2; the divergent (n-d)/2*log(gamma^2/2pi) term excluded).",
    )
    de.add_argument("spec", type=Path, help="model spec (TOML)")
    de.add_argument("--latex", action="store_true", help="print LaTeX instead of plain text")
    de.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    de.set_defaults(func=cmd_derive)

    cl = sub.add_parser("claims", help="list the claims registry", description="List the claims of docs/theory.md that gapcheck checks.")
    cl.add_argument("--json", action="store_true", help="print the registry as JSON")
    cl.add_argument("--markdown", action="store_true", help="print a Markdown claims table (docs/claims.md)")
    cl.add_argument("--report", metavar="JSON", help="with --markdown: take evidence and status from a verify report.json")
    cl.set_defaults(func=cmd_claims)

    from .cli_parsers import add_certify_parser, add_experiment_parser

    add_certify_parser(sub)
    add_experiment_parser(sub)
    return p


def _set_threads() -> None:
    """torch threads for the whole process (proofs_check.runtime.default_threads)."""
    import torch

    torch.set_num_threads(default_threads())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_INPUT
    with contextlib.ExitStack() as stack:
        cluster = None
        if args.command in ("evaluate", "verify"):
            try:
                cluster = _cluster(args)
            except UserError as exc:
                print(f"gapcheck: error: {exc}", file=sys.stderr)
                return EXIT_INPUT
        if cluster is not None:
            # the cluster starts in the background while this process imports torch and sympy and
            # parses its input; the command uses it through _cluster(args)
            from .distributed import ClientStart

            args.cluster_start = stack.enter_context(ClientStart(cluster, stop_forkserver=False))
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run the command, turning every error into one line and an exit status (README)."""
    from numerics.jacobian import SingularJacobianError
    from numerics.models import ModelError
    from numerics.optimize import ConvergenceError
    from theory.spec import SpecError

    try:
        _set_threads()
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
    except BrokenPipeError:  # the reader went away (e.g. `gapcheck claims | head`): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # never a raw traceback for a user; GAPCHECK_DEBUG=1 shows it
        if os.environ.get("GAPCHECK_DEBUG"):
            raise
        print(f"gapcheck: internal error ({type(exc).__name__}: {exc}); rerun with GAPCHECK_DEBUG=1 for the traceback "
              "and please report it", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
