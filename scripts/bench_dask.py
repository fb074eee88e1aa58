#!/usr/bin/env python
"""Benchmark `gapcheck evaluate --workers N` against the serial run (issue #10: ≥ 1.6× with two
workers on a sweep of ≥ 8 specs, identical results).

    python scripts/bench_dask.py                       # the three sweeps below, 3 repetitions each
    python scripts/bench_dask.py --sweep nl3-8 --repeat 5
    python scripts/bench_dask.py --workers 4 --start spawn

Sweeps (spec files written to a temporary folder):

- ``nl3-8`` / ``nl3-16``: 8 / 16 copies of the 3-D nonlinear spec of the issue
  (["z1 + 0.3*tanh(z2*z3)", "z2 + 0.2*sin(z1) * z3", "z3 + 0.25*z1*z2"], logistic prior,
  9 γ² from 0.01 to 1e12), each at a different latent point, so that no prediction or number
  is shared between specs;
- ``small-2d``: the 8 small specs of tests/proofs_check/test_distributed.py (d = 1, 2, 3, the
  built-in decoder families), 96 rows each with 12 γ², a sweep of seconds.

Each repetition runs the serial command and the ``--workers`` command one after the other (so
a change in the machine's load hits both), as fresh processes (`python -m proofs_check
evaluate SPECS --jsonl OUT --no-progress`, ``GAPCHECK_THREADS=1``), and checks that the two
JSON Lines files are byte-identical: a run whose files differ is reported and the script exits
with status 1.  Prints a Markdown table: the median and range of the wall times over the
repetitions, and the speed-up of the medians and of each repetition's pair (min–max).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NL3 = '["z1 + 0.3*tanh(z2*z3)", "z2 + 0.2*sin(z1) * z3", "z3 + 0.25*z1*z2"]'
NL3_GAMMA2 = "[0.01, 0.1, 1, 10, 100, 1e4, 1e6, 1e9, 1e12]"


def write_nl3(folder: Path, count: int) -> list[str]:
    """``count`` copies of the 3-D spec at latent points (±0.1 k, ∓0.5 or 0.4, 0.8 or −0.3)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        j = k % 8 + 1
        point = [0.1 * j, -0.5, 0.8] if k < 8 else [-0.1 * j, 0.4, -0.3]
        p = folder / f"nl3_{k + 1:02d}.toml"
        p.write_text(f'decoder = {NL3}\nprior = "logistic"\ngamma2 = {NL3_GAMMA2}\nlatents = [{point}]\n', encoding="utf-8")
        paths.append(str(p))
    return paths


def write_small(folder: Path) -> list[str]:
    from tests.proofs_check.test_distributed import write_sweep

    gamma2 = "[1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 1e4, 1e5, 1e6, 1e8, 1e10]"
    paths = write_sweep(folder, gamma2=gamma2)
    # 96 rows each: 8 points (the first ones repeated with small shifts) x 12 gamma^2
    from theory.spec import load_spec

    for p in paths:
        sym = load_spec(p)
        pts = [[round(v + 0.05 * k, 6) for v in sym.points[k % len(sym.points)]] for k in range(8)]
        text = Path(p).read_text(encoding="utf-8").splitlines()
        Path(p).write_text("\n".join(line if not line.startswith("latents") else f"latents = {pts}" for line in text) + "\n",
                           encoding="utf-8")
    return paths


def run(specs: list[str], out: Path, extra: list[str], start: str) -> float:
    env = {**os.environ, "GAPCHECK_THREADS": "1", "GAPCHECK_DASK_START": start}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "proofs_check", "evaluate", *specs, "--jsonl", str(out), "--no-progress", *extra],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", choices=["nl3-8", "nl3-16", "small-2d", "all"], default="all")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--start", choices=["forkserver", "spawn"], default="forkserver", help="GAPCHECK_DASK_START of the workers")
    args = ap.parse_args()
    sweeps = ["nl3-8", "nl3-16", "small-2d"] if args.sweep == "all" else [args.sweep]
    print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; --workers {args.workers} ({args.start})\n",
          flush=True)
    print("| sweep | rows | serial wall, median (range) | `--workers` wall, median (range) | speed-up of medians (per pair) | identical |")
    print("|---|---|---|---|---|---|")
    bad = False
    with tempfile.TemporaryDirectory(prefix="gapcheck-bench-dask-") as tmp:
        folder = Path(tmp)
        for name in sweeps:
            specs = write_small(folder / name) if name == "small-2d" else write_nl3(folder / name, 16 if name == "nl3-16" else 8)
            serial, par, same = [], [], True
            for _ in range(args.repeat):
                serial.append(run(specs, folder / "serial.jsonl", [], args.start))
                par.append(run(specs, folder / "par.jsonl", ["--workers", str(args.workers)], args.start))
                same &= (folder / "serial.jsonl").read_bytes() == (folder / "par.jsonl").read_bytes()
            rows = len((folder / "serial.jsonl").read_bytes().splitlines())
            ratios = [s / p for s, p in zip(serial, par)]
            ms, mp = statistics.median(serial), statistics.median(par)
            print(f"| {name} ({len(specs)} specs) | {rows} | {ms:.1f} s ({min(serial):.1f}–{max(serial):.1f}) | "
                  f"{mp:.1f} s ({min(par):.1f}–{max(par):.1f}) | {ms / mp:.2f}× ({min(ratios):.2f}–{max(ratios):.2f}) | "
                  f"{'yes' if same else '**no**'} |", flush=True)
            bad |= not same
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
