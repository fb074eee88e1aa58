"""Sweeps on Dask (proofs_check.distributed, docs/distributed.md).

Default run (no Dask needed): the worker functions called in this process — whole-chunk tasks
reassemble the serial numbers bit for bit, a worker's error is re-raised as the serial run
raises it — the task plans, the claim groups, the pinned hypothesis constants, and the clear
error when Dask is missing.

Slow (Dask needed): `gapcheck evaluate` of an 8-spec sweep with ``--workers 2`` and with
``--scheduler`` against a `dask scheduler` and two `dask worker` processes started here (torn
down, also on failure), compared with the serial run: JSON Lines byte for byte, tables equal
but for the timing line; `gapcheck verify` on the external cluster equal to the serial report
but for timings; a worker-side error reported as in the serial run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from proofs_check import distributed as dist
from proofs_check.cli import main
from proofs_check.evaluation import evaluate_spec
from proofs_check.runtime import UserError
from theory.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[2]

#: Eight small specs (d = 1, 2, 3; the built-in decoder families), several points each.
SWEEP = {
    "linear": ('["z1 + 0.5*z2", "0.2*z1 + 1.3*z2"]', "gaussian", [[0.3, -0.7], [1.0, 0.2]]),
    "triangular": ('["z1 + 0.4*z2**2", "z2"]', "logistic", [[0.3, 1.1], [-0.8, -0.5], [0.1, 0.2]]),
    "ima": ('["0.6*(z1 + z1**3/10) - 0.8*(z2 + z2**3/10)", "0.8*(z1 + z1**3/10) + 0.6*(z2 + z2**3/10)"]', "gaussian",
            [[0.4, -0.9], [0.0, 0.3]]),
    "embedding": ('["z1", "z2", "0.8*z1*z2 + 0.5*z1**2"]', "gaussian", [[0.7, 1.2]]),
    "mobius": ('["10*(z1 - 3)/((z1 - 3)**2 + z2**2)", "-10*z2/((z1 - 3)**2 + z2**2)"]', "logistic", [[0.5, 0.7]]),
    "scalar": ('["z1 + 0.3*z1**3"]', "student_t(5)", [[0.2], [-1.0], [0.8]]),
    "cubic3": ('["z1 + 0.2*z2*z3", "z2 + 0.1*z1**2", "z3 - 0.3*z1*z2"]', "gaussian", [[0.1, 0.2, -0.3]]),
    "curved": ('["z1 + 0.3*sin(z2)", "z2 + 0.2*z1**3", "0.5*tanh(z1 - z2)"]', "gaussian", [[0.4, -0.6], [0.1, 0.1]]),
}


def write_sweep(folder: Path, gamma2: str = "[10.0, 1e4]") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (decoder, prior, latents) in SWEEP.items():
        p = folder / f"{name}.toml"
        p.write_text(f'decoder = {decoder}\nprior = "{prior}"\ngamma2 = {gamma2}\nlatents = {latents}\n', encoding="utf-8")
        paths.append(str(p))
    return paths


def rows(ev) -> list[dict[str, Any]]:
    return [r.to_dict() for r in ev.results]


# ----------------------------------------------------------------------------------------
# Default run: no cluster
# ----------------------------------------------------------------------------------------


def test_whole_chunk_tasks_give_the_serial_numbers_bit_for_bit(tmp_path: Path) -> None:
    """The worker functions as SpecSweep runs them — the numbers of runs of whole chunks, the
    predictions as tasks of their own — reassembled in plan order, equal one serial
    evaluate_spec with the same chunk size exactly (==, not within an error)."""
    path = tmp_path / "two.toml"
    path.write_text('decoder = ["z1 + 0.4*z2**2", "z2"]\nprior = "logistic"\ngamma2 = [10.0, 1e4]\n'
                    'latents = [[0.3, 1.1], [-0.8, -0.5]]\n', encoding="utf-8")
    sym = load_spec(path)
    serial = evaluate_spec(sym, predictions=True, chunk=1)
    source = dataclasses.asdict(dist.SpecSource.from_path(path))
    numbers = dist.plan_points([len(sym.points)], chunk=1, workers=2)
    assert [(a, b) for _, a, b in numbers] == [(0, 1), (1, 2)]
    got = []
    for _, a, b in numbers:
        ans = dist._evaluate_task({"spec": source, "start": a, "stop": b, "options": {"predictions": False, "chunk": 1}, "threads": 1})
        assert "error" not in ans and all(r.prediction is None for r in ans["results"])
        got += ans["results"]
    runs = []
    for _, a, b in dist.plan_predictions(numbers, workers=2):
        runs.append((a, b, dist._predict_task({"spec": source, "start": a, "stop": b, "threads": 1})["predictions"]))
    assert [(a, b) for a, b, _ in runs] == [(0, 1), (1, 2)]
    dist.set_predictions(sym, got, runs)
    assert [r.to_dict() for r in got] == rows(serial)
    assert got[0].prediction is not None and got[0].prediction is got[1].prediction  # one dict per point, as serially


def test_plans_cut_whole_chunks_in_order() -> None:
    plan = dist.plan_points([70, 0, 5], chunk=8, workers=2)
    assert [p for p in plan if p[0] == 0][0] == (0, 0, 16)  # 10 chunks / (4 tasks x 2 workers) -> 2 chunks per task
    covered = {s: [] for s in range(3)}
    for s, a, b in plan:
        assert a % 8 == 0 and (b % 8 == 0 or b in (70, 5))  # runs of whole chunks
        covered[s] += range(a, b)
    assert covered == {0: list(range(70)), 1: [], 2: list(range(5))}
    assert (1, 0, 0) in plan  # a spec without points is still a task (it reports its error)
    assert [s for s, _, _ in plan] == sorted(s for s, _, _ in plan)  # serial order
    big = dist.plan_points([100_000], chunk=32, workers=2)
    assert max(b - a for _, a, b in big) == 16 * 32  # bounded tasks: progress and streaming


def test_a_skipped_prediction_reaches_the_rows_as_in_the_serial_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prediction refused for its size is a reason in the row (``prediction_skipped``), from
    the worker's prediction task as from the serial run."""
    import theory.expansions as E
    from proofs_check.evaluation import result_row

    monkeypatch.setattr(E, "MAX_CONTRACTION_OPS", 1)
    path = tmp_path / "two.toml"
    path.write_text('decoder = ["z1 + 0.4*z2**2", "z2"]\nprior = "logistic"\ngamma2 = [10.0]\n'
                    'latents = [[0.3, 1.1], [-0.8, -0.5]]\n', encoding="utf-8")
    serial = [result_row(r) for r in evaluate_spec(load_spec(path), predictions=True).results]
    assert all(row["prediction"] is None and "operations per point" in row["prediction_skipped"] for row in serial)
    source = dataclasses.asdict(dist.SpecSource.from_path(path))
    ans = dist._evaluate_task({"spec": source, "start": 0, "stop": 2, "options": {"predictions": False}, "threads": 1})
    runs = [(0, 2, dist._predict_task({"spec": source, "start": 0, "stop": 2, "threads": 1})["predictions"])]
    dist.set_predictions(load_spec(path), ans["results"], runs)
    assert [result_row(r) for r in ans["results"]] == serial


def test_a_worker_parses_a_spec_once_for_its_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "three.toml"
    path.write_text('decoder = ["z1 + 0.4*z2**2", "z2"]\nprior = "logistic"\ngamma2 = [10.0]\n'
                    'latents = [[0.3, 1.1], [-0.8, -0.5], [0.1, 0.2]]\n', encoding="utf-8")
    loads: list[int] = []
    real = dist.SpecSource.load
    monkeypatch.setattr(dist.SpecSource, "load", lambda self: loads.append(1) or real(self))
    source = dataclasses.asdict(dist.SpecSource.from_path(path))
    got = []
    for a, b in ((0, 1), (1, 3)):
        got += dist._evaluate_task({"spec": source, "start": a, "stop": b, "options": {"predictions": False}, "threads": 1})["results"]
    dist._predict_task({"spec": source, "start": 0, "stop": 3, "threads": 1})
    assert len(loads) == 1
    assert [r.to_dict() for r in got] == rows(evaluate_spec(load_spec(path), predictions=False))


def test_a_sweep_cuts_each_spec_in_its_serial_batches() -> None:
    """Per-spec chunk sizes (evaluation.default_chunk: POINT_CHUNK evaluations, all γ² of a
    point together): a task is a run of whole chunks of its own spec's size."""
    plan = dist.plan_points([40, 40], chunk=[4, 10], workers=1)
    for s, a, b in plan:
        size = (4, 10)[s]
        assert a % size == 0 and (b % size == 0 or b == 40)
    assert [b - a for s, a, b in plan if s == 0][0] != [b - a for s, a, b in plan if s == 1][0]


def test_a_worker_error_is_raised_as_in_the_serial_run(tmp_path: Path) -> None:
    spec = tmp_path / "nogamma.toml"
    spec.write_text('decoder = ["z1 + 0.4*z2**2", "z2"]\nprior = "gaussian"\nlatents = [[0.3, 1.1]]\n', encoding="utf-8")
    with pytest.raises(SpecError) as serial:
        evaluate_spec(load_spec(spec))
    ans = dist._evaluate_task({"spec": dataclasses.asdict(dist.SpecSource.from_path(spec)), "start": 0, "stop": 1, "options": {}, "threads": 1})
    assert set(ans) == {"error"}
    with pytest.raises(SpecError) as remote:
        dist._reraise(ans["error"])
    assert str(remote.value) == str(serial.value)
    # an exception that is none of gapcheck's own types keeps its name and message
    with pytest.raises(dist.WorkerError) as other:
        dist._reraise(dist._error_record(KeyError("boom")))
    assert type(other.value).__name__ == "KeyError" and "boom" in str(other.value)


def test_claim_tasks_keep_every_claim_once_and_the_cache_sharers_together() -> None:
    from proofs_check.checks import all_claims

    ids = [c.id for c in all_claims()]
    tasks = dist.claim_tasks(ids)
    flat = [c for t in tasks for c in t]
    assert sorted(flat) == sorted(ids) and len(flat) == len(ids)
    group = next(t for t in tasks if "C7" in t)
    assert group[0] == "C7" and {"C9", "C11", "C16"} <= set(group)  # after C7, which fills the sweeps they read
    assert dist.claim_tasks(["C9", "C3", "C7"]) == [["C7", "C9"], ["C3"]]


def test_property_examples_do_not_depend_on_the_imported_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """hypothesis mixes in literals of the local modules imported so far; inside verify's checks
    (verification.global_hypothesis_constants) it must not, or a Dask worker (other modules)
    would draw other examples than the serial run."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from proofs_check.verification import global_hypothesis_constants

    hypothesis_has_local_constants = pytest.importorskip("hypothesis.internal.conjecture.providers")
    if not hasattr(hypothesis_has_local_constants, "_get_local_constants"):
        pytest.skip("this hypothesis draws no local constants")

    def examples(pinned: bool) -> list[float]:
        seen: list[float] = []

        @settings(max_examples=300, derandomize=True, database=None, deadline=None)
        @given(st.floats(-1e9, 1e9))
        def prop(x: float) -> None:
            seen.append(x)

        if pinned:
            with global_hypothesis_constants():
                prop()
        else:
            prop()
        return seen

    before_pinned, before = examples(True), examples(False)
    # a new local module full of literals, as a worker's or a user's own modules would be
    mod = tmp_path / "gapcheck_probe_constants.py"
    mod.write_text("VALUES = [" + ", ".join(f"{k}.123456789" for k in range(1, 400)) + "]\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    import gapcheck_probe_constants  # noqa: F401

    try:
        assert examples(True) == before_pinned
        assert examples(False) != before  # the effect the pin removes is real (the check can fail)
    finally:
        sys.modules.pop("gapcheck_probe_constants", None)


def test_without_dask_the_flags_say_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    spec = write_sweep(tmp_path)[0]
    assert main(["evaluate", spec, "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'gapcheck[dask]'" in err and "Traceback" not in err


def test_cluster_options_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = write_sweep(tmp_path)[0]
    assert main(["evaluate", spec, "--workers", "0"]) == 2
    assert "--workers must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", spec, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])
    assert exc.value.code == 2


def test_a_cluster_start_hands_its_error_to_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """ClientStart (the CLI starts its cluster in the background): the start's error reaches
    whoever asks for the client, and closing a failed start is harmless."""
    monkeypatch.setitem(sys.modules, "distributed", None)
    start = dist.ClientStart(dist.Cluster(workers=2))
    with pytest.raises(dist.ClusterError, match="pip install 'gapcheck\\[dask\\]'"):
        start.get()
    start.close()
    with pytest.raises(dist.ClusterError):  # and again: the error is kept, not lost after the first get()
        start.get()


def test_local_workers_start_from_a_forkserver_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    monkeypatch.delenv("GAPCHECK_DASK_START", raising=False)
    has_forkserver = "forkserver" in multiprocessing.get_all_start_methods()
    assert dist._start_method() == ("forkserver" if has_forkserver else "spawn")
    monkeypatch.setenv("GAPCHECK_DASK_START", "spawn")
    assert dist._start_method() == "spawn"
    monkeypatch.setenv("GAPCHECK_DASK_START", "fork")  # plain fork of a process with threads: refused
    with pytest.raises(UserError, match="GAPCHECK_DASK_START must be forkserver or spawn"):
        dist._start_method()


@pytest.mark.slow
def test_the_forkserver_warm_up_runs_on_one_cpu_thread_without_cuda() -> None:
    """What the workers inherit: the numeric stack imported and warmed (WARMED), torch at one
    thread (no OpenMP pool before the fork) and no CUDA state (a forked child could not use it).
    In a fresh interpreter, as the forkserver imports it."""
    code = ("import sys, proofs_check._worker_warmup as w, torch; "
            "print(w.WARMED, torch.get_num_threads(), torch.cuda.is_initialized(), 'theory.expansions' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "1", "False", "True"]


def test_api_refuses_a_parsed_model_for_workers() -> None:
    import proofs_check as pc

    with pytest.raises(SpecError, match="path, TOML text or dict"):
        pc.evaluate(pc.load_spec(ROOT / "examples" / "triangular.toml"), workers=2)
    with pytest.raises(SpecError, match="workers must be a positive integer"):
        pc.evaluate(ROOT / "examples" / "triangular.toml", workers=0)


# ----------------------------------------------------------------------------------------
# Slow: real clusters
# ----------------------------------------------------------------------------------------


def _table(out: str) -> list[str]:
    """stdout of evaluate without what differs between runs: the timing in each model line and the output file names."""
    lines = []
    for line in out.splitlines():
        if line.startswith("model '"):
            line = line.split(" evaluations in ")[0]
        if not line.startswith("JSON Lines written to"):
            lines.append(line)
    return lines


def _run_evaluate(specs: list[str], out: Path, *extra: str, start: str = "forkserver") -> subprocess.CompletedProcess:
    env = {**os.environ, "GAPCHECK_THREADS": "1", "GAPCHECK_DASK_START": start}
    return subprocess.run([sys.executable, "-m", "proofs_check", "evaluate", *specs, "--no-progress", "--jsonl", str(out), *extra],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def _descendants() -> set[int]:
    """This process's child processes, but for multiprocessing's resource tracker (it lives as
    long as this process, whoever spawned a process first)."""
    psutil = pytest.importorskip("psutil")
    kids = set()
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if "resource_tracker" not in " ".join(p.cmdline()):
                kids.add(p.pid)
    return kids


@pytest.fixture(scope="module")
def serial_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], bytes, list[str]]:
    """The 8-spec sweep run serially: (spec paths, JSON Lines bytes, table lines)."""
    folder = tmp_path_factory.mktemp("sweep")
    specs = write_sweep(folder / "specs")
    serial = _run_evaluate(specs, folder / "serial.jsonl")
    assert serial.returncode == 0, serial.stderr
    data = (folder / "serial.jsonl").read_bytes()
    assert len(data.splitlines()) == 2 * sum(len(v[2]) for v in SWEEP.values())
    return specs, data, _table(serial.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("start", ["forkserver", "spawn"])
def test_workers_2_gives_the_serial_sweep(tmp_path: Path, serial_sweep: tuple[list[str], bytes, list[str]], start: str) -> None:
    """Workers forked from the warmed-up forkserver (the default) and workers started as fresh
    interpreters give the serial numbers alike."""
    pytest.importorskip("distributed")
    specs, data, table = serial_sweep
    par = _run_evaluate(specs, tmp_path / "par.jsonl", "--workers", "2", start=start)
    assert par.returncode == 0, par.stderr
    assert (tmp_path / "par.jsonl").read_bytes() == data
    assert _table(par.stdout) == table
    assert "Traceback" not in par.stderr


@pytest.mark.slow
def test_api_workers_match_the_serial_evaluation(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    import proofs_check as pc

    spec = tmp_path / "many.toml"
    pts = [[0.1 * k, -0.05 * k] for k in range(-6, 7)]
    spec.write_text(f'decoder = ["z1 + 0.4*z2**2", "z2"]\nprior = "logistic"\ngamma2 = [1e2, 1e6]\nlatents = {pts}\n',
                    encoding="utf-8")
    before = _descendants()
    seen: list[Any] = []
    par = pc.evaluate(spec, workers=2, predictions=False, on_result=seen.append)
    assert _descendants() <= before  # the local cluster's processes are gone
    assert rows(par) == rows(pc.evaluate(spec, predictions=False))
    assert seen == par.results  # on_result sees every result, as in the serial run
    streamed = pc.evaluate(spec, workers=2, predictions=False, on_result=seen.append, keep_results=False)
    assert streamed.results == [] and streamed.n_results == len(par.results)
    text = spec.read_text(encoding="utf-8")
    assert rows(pc.evaluate(text, workers=1, predictions=False)) == rows(par)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[str]:
    """A `dask scheduler` and two single-threaded `dask worker` processes on this machine, as a
    user would start them; every process (and its children) is ended afterwards."""
    pytest.importorskip("distributed")
    psutil = pytest.importorskip("psutil")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "GAPCHECK_THREADS": "1",
           "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": "{'MALLOC_TRIM_THRESHOLD_': None}"}  # docs/distributed.md
    dask_cli = [sys.executable, "-m", "dask", "scheduler"]  # `dask scheduler`, with this Python
    worker_cli = [sys.executable, "-m", "dask", "worker"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen([*dask_cli, "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        for _ in range(2):
            procs.append(subprocess.Popen([*worker_cli, address, "--nthreads", "1", "--no-dashboard", "--memory-limit", "0"],
                                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        # first as a user would: ask the scheduler to close itself and its workers (a worker ends
        # normally then, so its exit handlers run, e.g. removing hypothesis' temporary folder)
        if procs:
            with contextlib.suppress(Exception):
                from distributed import Client

                with Client(address, timeout=10) as client:
                    client.shutdown()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                time.sleep(0.2)
        family = []
        for p in procs:
            with_children = [p.pid]
            try:
                with_children += [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
            family += with_children
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=20)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                                                  for pid in family):
            time.sleep(0.2)
        for pid in family:  # a worker process its nanny did not end
            if psutil.pid_exists(pid):
                with contextlib.suppress(psutil.NoSuchProcess):
                    psutil.Process(pid).kill()
        assert not [pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_scheduler_runs_the_same_sweep(tmp_path: Path, dask_cluster: str, serial_sweep: tuple[list[str], bytes, list[str]]) -> None:
    specs, data, table = serial_sweep
    remote = _run_evaluate(specs, tmp_path / "remote.jsonl", "--scheduler", dask_cluster)
    assert remote.returncode == 0, remote.stderr
    assert (tmp_path / "remote.jsonl").read_bytes() == data
    assert _table(remote.stdout) == table
    assert "MALLOC_TRIM_THRESHOLD_" not in remote.stderr  # the workers were started without it


@pytest.mark.slow
def test_scheduler_reports_a_worker_error_as_the_serial_run(tmp_path: Path, dask_cluster: str) -> None:
    specs = write_sweep(tmp_path / "specs")[:2]
    bad = tmp_path / "specs" / "nogamma.toml"
    bad.write_text('decoder = ["z1", "z2"]\nprior = "gaussian"\nlatents = [[0.3, 1.1]]\n', encoding="utf-8")
    serial = _run_evaluate([*specs, str(bad)], tmp_path / "s.jsonl")
    remote = _run_evaluate([*specs, str(bad)], tmp_path / "r.jsonl", "--scheduler", dask_cluster)
    assert serial.returncode == remote.returncode == 2
    assert remote.stderr.strip().splitlines()[-1] == serial.stderr.strip().splitlines()[-1]
    assert "spec has no 'gamma2'" in remote.stderr and "Traceback" not in remote.stderr
    assert _table(remote.stdout) == _table(serial.stdout)  # the specs before it printed, as serially
    assert (tmp_path / "r.jsonl").read_bytes() == (tmp_path / "s.jsonl").read_bytes()


TIMINGS = {"seconds", "check_seconds", "started"}


def _untimed(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _untimed(v) for k, v in o.items() if k not in TIMINGS}
    if isinstance(o, list):
        return [_untimed(v) for v in o]
    return o


@pytest.mark.slow
def test_scheduler_verify_gives_the_serial_report(tmp_path: Path, dask_cluster: str) -> None:
    """Claims with property checks (hypothesis), symbolic and numerical ones, and a claim that
    reads another's cached sweeps (C8 after C7, one task), on the external cluster."""
    env = {**os.environ, "GAPCHECK_THREADS": "1"}
    claims = "C2,C6,C7,C8,N2"
    base = [sys.executable, "-m", "proofs_check", "verify", "--quick", "--claims", claims, "--no-progress"]
    serial = subprocess.run([*base, "--out", str(tmp_path / "s")], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    remote = subprocess.run([*base, "--out", str(tmp_path / "r"), "--scheduler", dask_cluster], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=600)
    assert serial.returncode == remote.returncode == 0, remote.stderr
    s = json.loads((tmp_path / "s" / "report.json").read_text())
    r = json.loads((tmp_path / "r" / "report.json").read_text())
    assert any(c["evidence"] == "property" for e in r["claims"] for c in e["checks"])
    assert _untimed(r) == _untimed(s)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(p.name for p in (tmp_path / "s").iterdir())


@pytest.mark.slow
def test_no_scheduler_at_the_address_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("distributed")
    monkeypatch.setattr(dist, "CONNECT_TIMEOUT", 2.0)
    spec = write_sweep(tmp_path)[0]
    address = f"tcp://127.0.0.1:{_free_port()}"
    assert main(["evaluate", spec, "--scheduler", address, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Dask scheduler at {address}" in err and "Traceback" not in err
