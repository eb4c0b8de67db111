"""`imagio batch`: run any step over a case manifest on Dask, locally or on an existing cluster.

    imagio batch --manifest CSV --out DIR [--workers N | --scheduler ADDRESS] [--resume]
                 [--memory-limit-gb G]

Each manifest row (see :mod:`imagio.batch_manifest`) is one case: the step's
own command line, parsed by the step's own parser, run by the same code as
``imagio <step>`` inside a Dask worker (:func:`imagio.batch_case.run_case`),
writing ``DIR/<case_id>/<step>/`` (the step's usual files) next to the case's
``batch_case.json`` and ``log.txt``. A case that fails, raises, or kills its
worker (for example above its memory limit) becomes an error row with its
one-line message, and the batch goes on. ``DIR/summary.csv``,
``DIR/batch.json`` and ``DIR/cohort.html`` describe the cohort.

Without ``--scheduler`` the cases run on a ``distributed.LocalCluster`` of N
worker processes (default: the machine's cores), one case at a time per
worker, with a memory limit per worker; with ``--scheduler tcp://host:port``
on an existing cluster, whose workers must see DIR and the inputs at the same
paths (a shared filesystem). Exit status: 0 when every case succeeded, 1 when
some failed (the summary is still written), 2 for a bad manifest or request,
130 after Ctrl-C (143 after SIGTERM): the cases that finished are kept and
summarised as ok, the others as not run (our own workers are stopped before
their staging folders are removed), and ``--resume`` runs only those.

Python: ``imagio.batch.run(manifest, out, client=None, ...)`` returns the
:class:`~imagio.batch_report.SummaryTable`. dask and distributed are the
optional ``batch`` extra: they are imported only here, when a batch runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import shutil
import signal
import sys
import threading
import time
import uuid
from importlib import metadata
from pathlib import Path

from . import __version__
from .batch_case import EVENT_TOPIC, RECORD, STAGING, complete_record, error_record, publish_record, run_case
from .batch_manifest import read_manifest
from .batch_report import SummaryTable, atomic_write, cohort_html, summary_row, write_batch_json
from .cli_utils import check_out_dir, number
from .errors import ImagioError
from .progress import TerminalLine

LOCK = ".batch.lock"
#: Dask settings of the LocalCluster that `imagio batch` starts: one case per worker at a time, a case that kills
#: its worker twice becomes an error row, and a worker is restarted (not paused, not spilled) above its memory limit.
LOCAL_DASK_CONFIG = {
    "distributed.scheduler.allowed-failures": 1,
    "distributed.scheduler.worker-saturation": 1.0,
    "distributed.worker.memory.target": False,
    "distributed.worker.memory.spill": False,
    "distributed.worker.memory.pause": False,
    "distributed.worker.memory.terminate": 0.95,
}
#: The module every LocalCluster worker process preloads (its dask_setup ignores SIGINT there).
WORKER_PRELOAD = "imagio.batch_case"
#: How often a case that was only waiting on (or had finished on) a worker that died is run again.
BYSTANDER_RETRIES = 3
VERSIONED = ("dask", "distributed", "numpy", "SimpleITK", "vtk", "slicer-core", "onnxruntime", "pydicom", "scipy")


def _require_dask():
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError as e:
        raise ImagioError(f"imagio batch needs dask.distributed, which is not installed ({e.name})",
                          "Install the optional extra: pip install 'imagio[batch]'") from None
    return distributed


def machine_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def versions() -> dict[str, str]:
    out = {"imagio": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for name in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _worker_check(out_dir: str) -> dict:
    """Run on every worker before the cases: can it see DIR, and which imagio does it have?"""
    from . import io, scene  # noqa: F401 - SimpleITK, VTK and Slicer's MRML: imported before the first case is timed
    from .cli import build_parser

    build_parser()
    return {"sees_out": os.path.isdir(out_dir) and os.access(out_dir, os.W_OK), **versions()}


# ------------------------------------------------------------------------------------------ progress
class _Progress:
    """A bar on a terminal (cases done / failed / running); a few lines otherwise (through progress.TerminalLine)."""

    def __init__(self, total: int, stream=None, callback=None, enabled: bool = True):
        self.total, self.callback, self.enabled = total, callback, enabled
        self.out = TerminalLine(stream or sys.stderr)
        self.tty = self.out.live
        self.t0 = time.perf_counter()
        self.last_quarter = -1
        self.last_draw = 0.0
        self.state = (-1, -1, -1)

    def line(self, text: str) -> None:
        if self.enabled and self.callback is None:
            self.out.line(text)

    def update(self, done: int, failed: int, running: int, force: bool = False) -> None:
        if self.callback is not None:
            if (done, failed, running) != self.state:
                self.callback(done, failed, running, self.total)
            self.state = (done, failed, running)
            return
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        if self.tty:
            now = time.perf_counter()
            if not force and (done, failed, running) == self.state and now - self.last_draw < 1.0:
                return
            self.state, self.last_draw = (done, failed, running), now
            width = 30
            fill = int(width * done / max(self.total, 1))
            eta = ""
            if 0 < done < self.total:
                eta = f", about {(self.total - done) * elapsed / done / 60:.1f} min left"
            self.out.draw(f"batch [{'#' * fill}{'.' * (width - fill)}] {done}/{self.total} done, "
                          f"{failed} failed, {running} running, {elapsed:.0f} s{eta}")
            return
        quarter = int(4 * done / max(self.total, 1))
        if quarter > self.last_quarter or force:
            self.last_quarter = quarter
            self.out.line(f"batch: {done}/{self.total} cases done, {failed} failed, {running} running ({elapsed:.0f} s)")

    def close(self) -> None:
        if self.enabled and self.callback is None:
            self.out.end()


# ------------------------------------------------------------------------------------------ the output folder
def _written_by_batch(out: Path) -> bool:
    return any((out / n).exists() for n in ("batch.json", LOCK, STAGING)) or any(out.glob(f"*/{RECORD}"))


def _prepare_out(out: Path, manifest, resume: bool, overwrite: bool) -> None:
    guarded = [out / STAGING, *(out / c.case_id for c in manifest.cases)]
    for c in manifest.cases:
        for col, paths in c.inputs.items():
            for p in paths:
                rp = Path(p).resolve()
                if any(rp == g.resolve() or rp.is_relative_to(g.resolve()) for g in guarded):
                    raise ImagioError(f"Input {p} (case {c.case_id}, column {col}) lies inside a case folder of "
                                      f"{out}, which the batch replaces", "Keep inputs outside the --out folder")
    if any(manifest.path.resolve().is_relative_to(g.resolve()) for g in guarded):
        raise ImagioError(f"The manifest lies inside a case folder of {out}", "Keep it outside the --out folder")
    if out.exists() and not out.is_dir():
        raise ImagioError(f"--out {out} exists and is not a folder", "Give a folder for --out")
    if out.is_dir() and any(out.iterdir()):
        if not (resume or overwrite):
            raise ImagioError(f"--out {out} is not empty", "Use --resume to continue the batch written there, "
                              "--overwrite to recompute all its cases, or choose a new folder")
        if not _written_by_batch(out):
            raise ImagioError(f"--out {out} was not written by imagio batch (no batch.json, no case records)",
                              "Choose a new folder for the batch")
    else:
        check_out_dir(out, overwrite=False)  # a folder that can be made: not under a file, not on /proc ...


@contextlib.contextmanager
def _locked(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / LOCK, "w")  # noqa: SIM115 - held for the whole batch
    try:
        try:
            try:
                import fcntl

                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # Windows
                import msvcrt

                msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            raise ImagioError(f"Another imagio batch is writing into {out}", "Wait for it, or choose another "
                              "--out folder") from None
        yield
    finally:
        fh.close()


def _clean_staging(out: Path) -> None:
    st = out / STAGING
    if st.is_dir():
        for p in st.iterdir():
            shutil.rmtree(p, ignore_errors=True)
        with contextlib.suppress(OSError):
            st.rmdir()


# ------------------------------------------------------------------------------------------ the engine
@contextlib.contextmanager
def _children_ignore_sigint():
    """SIGINT ignored while the LocalCluster's worker processes start, so that they inherit "ignored" (kept across
    exec; Python then installs no KeyboardInterrupt handler). A terminal's Ctrl-C reaches the whole process group:
    only the batch must act on it (it closes its cluster, which ends the workers); a worker that took it printed a
    KeyboardInterrupt traceback from inside Dask. A Ctrl-C during the cluster's start (a few seconds) is ignored.
    Workers that a nanny starts later (restarts) ignore it through the preload (imagio.batch_case.dask_setup)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _local_cluster(workers: int | None, memory_limit_gb: float | None, threads_per_case: int | None = None):
    import dask
    from distributed import Client, LocalCluster

    n = workers or machine_cores()
    # each worker's share of the cores for ITK / BLAS / ONNX Runtime inside a case
    threads = threads_per_case or max(1, machine_cores() // n)
    env = {k: str(threads) for k in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS",
                                     "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    limit = f"{memory_limit_gb}GiB" if memory_limit_gb else "auto"
    with dask.config.set(LOCAL_DASK_CONFIG), _children_ignore_sigint():
        # no dashboard; the scheduler's HTTP server (always started) on a free loopback port, not on 8787, which a
        # running dashboard or another cluster may hold ("Port 8787 is already in use" on the terminal)
        # preload: every worker process ignores SIGINT whenever it starts, also one its nanny restarts after a
        # memory kill (spawned while this process has its own handler again): imagio.batch_case.dask_setup
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, memory_limit=limit,
                               dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                               silence_logs=logging.CRITICAL, env=env, preload=[WORKER_PRELOAD])
        client = Client(cluster)
    return client, cluster


def _connect(scheduler: str):
    from distributed import Client

    try:
        return Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as e:
        raise ImagioError(f"Cannot reach the Dask scheduler at {scheduler} ({type(e).__name__}: {e})",
                          "Start one with `dask scheduler` and `dask worker ADDRESS`, or check the address") from None


def _events(client, topic: str) -> list[dict]:
    try:
        evs = client.get_events(topic)
    except Exception:  # noqa: BLE001 - events only refine a message
        return []
    return [m for _, m in evs if isinstance(m, dict)]


def _starts_by_worker(client, batch_token: str) -> dict[str, list[dict]]:
    """This batch's case-start events (worker, case_id, nthreads), per worker in the order they started."""
    by_worker: dict[str, list[dict]] = {}
    for e in _events(client, EVENT_TOPIC):
        if e.get("batch") == batch_token:
            by_worker.setdefault(e.get("worker"), []).append(e)
    return by_worker


def _last_cases(starts: list[dict], nthreads) -> set[str]:
    """The cases a worker started last, as many as it has threads: the ones it runs (or ran when it died)."""
    return {e.get("case_id") for e in starts[-max(int(nthreads or 1), 1):]}


def _running_cases(client, batch_token: str) -> set[str]:
    """The cases running now: on each live worker, the cases it started last (as many as it has threads). A case
    whose worker died, or that its worker has finished, is not running, even while its future is pending
    (a killed worker's case waits for the scheduler's verdict, and the worker's replacement starts another)."""
    try:
        alive = client.scheduler_info().get("workers", {})
    except Exception:  # noqa: BLE001 - the count only feeds the progress line
        return set()
    running: set[str] = set()
    for worker, starts in _starts_by_worker(client, batch_token).items():
        if worker in alive:
            running |= _last_cases(starts, alive[worker].get("nthreads"))
    return running


def _deaths_while_running(client, batch_token: str, case_id: str) -> int:
    """How many workers died while this case was one they were running: dead workers (gone from the scheduler)
    on which this case was among the last cases started (as many as the worker had threads). A case that was only
    waiting on a worker, or had finished there, when the worker died is a bystander (0)."""
    try:
        alive = set(client.scheduler_info().get("workers", {}))
    except Exception:  # noqa: BLE001 - without the list, count the case as running (no retry)
        return 1
    return sum(case_id in _last_cases(starts, starts[-1].get("nthreads"))
               for worker, starts in _starts_by_worker(client, batch_token).items() if worker not in alive)


def _death_message(client, batch_token: str, case_id: str, exc: BaseException, limits: dict) -> str:
    starts = [e for e in _events(client, EVENT_TOPIC) if e.get("batch") == batch_token and e.get("case_id") == case_id]
    ran_on = {e.get("worker") for e in starts} | {e.get("pid") for e in starts}
    mem = [e for e in _events(client, "worker-restart-memory") if e.get("worker") in ran_on or e.get("pid") in ran_on]
    attempts = len(starts) or 1
    if mem:
        rss = max(float(e.get("rss") or 0) for e in mem) / 2**30
        limit = limits.get(mem[-1].get("worker")) or (max(limits.values()) if limits else None)
        lim = f" of its {limit / 2**30:.2f} GB limit" if limit else ""
        return (f"worker killed for memory while running this case: {rss:.2f} GB in use, above "
                f"{100 * _terminate_fraction():.0f} %{lim} ({attempts} attempt(s)); give the workers more memory "
                f"(--memory-limit-gb) or fewer workers")
    return (f"the worker process died while running this case ({attempts} attempt(s)): a crash in native code or "
            f"a kill from outside; see the worker's log")


def _terminate_fraction() -> float:
    import dask

    v = dask.config.get("distributed.worker.memory.terminate", 0.95)
    return float(v) if v else 0.95


# ------------------------------------------------------------------------------------------ the batch
def run(manifest, out, client=None, *, workers: int | None = None, scheduler: str | None = None,
        resume: bool = False, overwrite: bool = False, memory_limit_gb: float | None = None,
        progress=None) -> SummaryTable:
    """Run every case of ``manifest`` into ``out``; returns the summary table (also written as summary.csv).

    ``client``: a ``distributed.Client`` to use as it is; else ``scheduler`` (an address) to connect to;
    else a LocalCluster of ``workers`` processes (default: the machine's cores) with ``memory_limit_gb`` per
    worker (default: the machine's memory shared out). ``resume``: keep cases that finished before with the
    same inputs and options (status ``skipped``) and run the others; ``overwrite``: run every case again in
    a folder an earlier batch wrote (each case folder is replaced when its new run ends). ``progress``: None (a bar on a terminal,
    a few lines otherwise), False (silent) or ``callback(done, failed, running, total)``.
    Raises ImagioError for a bad manifest or request (nothing is run then).
    """
    if client is not None and (scheduler or workers or memory_limit_gb):
        raise ImagioError("Give either a client or scheduler/workers/memory limit", "The client's cluster is used as is")
    if resume and overwrite:
        raise ImagioError("--resume keeps finished cases, --overwrite recomputes them", "Give one of them")
    if scheduler and (workers or memory_limit_gb):
        raise ImagioError("--workers and --memory-limit-gb set up a local cluster; with --scheduler the cluster's "
                          "own workers run the cases", "Leave them out, or leave out --scheduler")
    if workers is not None and (not isinstance(workers, int) or not 1 <= workers <= 1024):
        raise ImagioError(f"--workers must be a whole number from 1 to 1024, got {workers}", "e.g. --workers 4")
    if memory_limit_gb is not None and (not math.isfinite(memory_limit_gb) or not 0.1 <= memory_limit_gb <= 1e5):
        raise ImagioError(f"--memory-limit-gb must be a number of GB from 0.1 to 100000, got {memory_limit_gb}",
                          "e.g. --memory-limit-gb 4")
    t_start = time.time()
    m = read_manifest(manifest)
    out = Path(out).expanduser().absolute()
    _prepare_out(out, m, resume, overwrite)
    specs = [dict(c.to_dict()) for c in m.cases]

    def earlier() -> dict[str, dict]:  # the cases that --resume keeps
        return {s["case_id"]: rec for s in specs if resume and (rec := complete_record(out, s)) is not None}

    engine: dict = {"kind": "none (every case was complete)"}
    own: list = []  # the client and cluster made here, closed at the end
    if len(earlier()) < len(specs):  # the engine is ready (or refused) before anything is written
        client, engine = _open_engine(client, scheduler, workers, memory_limit_gb, own)
    try:
        with _locked(out):
            records = earlier()
            recomputed = {k: False for k in records}
            todo = [s for s in specs if s["case_id"] not in records]
            prog = _Progress(len(specs), callback=progress if callable(progress) else None,
                             enabled=progress is not False)
            interrupted = None
            if todo:
                if client is None:  # a case of the earlier batch disappeared meanwhile
                    client, engine = _open_engine(client, scheduler, workers, memory_limit_gb, own)
                batch_token = uuid.uuid4().hex
                interrupted = _run_cases(client, out, todo, records, recomputed, engine, prog, len(records),
                                         batch_token)
                if interrupted is not None:
                    # our own workers stop before their staging folders are removed; a cluster we do not own
                    # may still be running cases (Dask cannot stop a running task): their staging stays
                    _close(own)
                    _collect_published(out, todo, records, recomputed, batch_token)
            else:
                prog.update(len(specs), 0, 0, force=True)
            clean = interrupted is None or engine.get("kind") == "LocalCluster"
            table = _finish(out, m, specs, records, recomputed, engine, prog, t_start, resume, clean)
    finally:
        _close(own)
    if interrupted is not None:
        raise interrupted
    return table


def _close(own: list) -> None:
    """Close the client and cluster that this batch made (the LocalCluster's workers end), once."""
    while own:
        with contextlib.suppress(Exception):
            own.pop().close()


def _collect_published(out: Path, todo, records, recomputed, batch_token: str) -> None:
    """After an interruption: the cases that this batch published but whose results had not been fetched yet."""
    for s in todo:
        if s["case_id"] in records:
            continue
        try:
            rec = json.loads((out / s["case_id"] / RECORD).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("batch") == batch_token:
            records[s["case_id"]] = rec
            recomputed[s["case_id"]] = True


def _open_engine(client, scheduler, workers, memory_limit_gb, own: list):
    _require_dask()
    if client is not None:
        return client, {"kind": "client", "address": getattr(client.scheduler, "address", str(client))}
    if scheduler:
        client = _connect(scheduler)
        own.append(client)
        return client, {"kind": "scheduler", "address": scheduler}
    client, cluster = _local_cluster(workers, memory_limit_gb)
    own.extend([cluster, client])
    n = len(cluster.workers)
    return client, {"kind": "LocalCluster", "workers": n,
                    "memory_limit_gb_per_worker": memory_limit_gb or "auto (machine memory / workers)",
                    "threads_per_worker": 1, "cores_per_case": max(1, machine_cores() // n)}


def _finish(out: Path, m, specs, records, recomputed, engine, prog, t_start, resume, clean=True) -> SummaryTable:
    """Write summary.csv, batch.json and cohort.html (each atomically); the summary table."""
    prog.close()
    if clean:  # no case of this batch runs any more
        _clean_staging(out)
    rows = []
    for s in specs:
        rec = records.get(s["case_id"])
        if rec is None:
            rows.append({"case_id": s["case_id"], "step": s["step"], "status": "error",
                         "message": "not run: the batch was interrupted", "runtime_s": None})
        elif not recomputed.get(s["case_id"], True):
            rows.append(summary_row(rec, "skipped", f"complete from the run started {rec.get('started')}: inputs "
                                                    f"and options unchanged, not recomputed"))
        else:
            rows.append(summary_row(rec))
    table = SummaryTable(rows)
    finished = time.strftime("%Y-%m-%dT%H:%M:%S")
    info = {
        "format": "imagio-batch/1", "name": out.name, "manifest": str(m.path), "manifest_sha256": m.sha256,
        "out": str(out), "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t_start)),
        "finished": finished, "wall_time_s": round(time.time() - t_start, 3), "resume": bool(resume),
        "engine": engine, "versions": versions(), "counts": table.counts(),
        "cases": [{**{k: s[k] for k in ("case_id", "step", "line", "argv", "options_sha256", "inputs")},
                   "status": r["status"], "message": r["message"], "runtime_s": r["runtime_s"],
                   "recomputed": recomputed.get(s["case_id"], False),
                   "worker": (records.get(s["case_id"]) or {}).get("worker", "")}
                  for s, r in zip(specs, rows, strict=True)],
    }
    table.to_csv(out / "summary.csv")
    write_batch_json(out / "batch.json", info)
    eng = engine.get("kind", "")
    if engine.get("workers"):
        eng += f" of {engine['workers']} workers"
    if engine.get("address"):
        eng += f" at {engine['address']}"
    atomic_write(out / "cohort.html", cohort_html(table, {**info, "engine": eng}))
    return table


def _run_cases(client, out: Path, todo, records, recomputed, engine, prog, already: int, batch_token: str):
    """Submit the cases, follow them to the end; the interruption (Ctrl-C, SIGTERM) if one came, else None."""
    from distributed import KilledWorker, as_completed

    info = client.run(_worker_check, str(out))
    if not info:
        raise ImagioError("The Dask cluster has no workers", "Start workers with `dask worker SCHEDULER_ADDRESS`")
    blind = sorted(w for w, v in info.items() if not v.get("sees_out"))
    if blind:
        raise ImagioError(f"Dask worker(s) {', '.join(blind)} cannot write into {out}",
                          "The output folder must be on a filesystem the workers share, at the same path")
    engine["worker_versions"] = info
    engine.setdefault("workers", len(info))
    limits = {w: v.get("memory_limit") for w, v in client.scheduler_info().get("workers", {}).items()
              if v.get("memory_limit")}
    by_key = {f"imagio-batch-{s['case_id']}-{batch_token[:8]}": s for s in todo}
    # results are fetched as soon as a case ends and the future is released then: a worker that dies later
    # cannot make the scheduler run a finished case again
    def submit(spec, key):
        return client.submit(run_case, {**spec, "batch_token": batch_token}, str(out), pure=False, key=key)

    completed = as_completed([submit(s, key) for key, s in by_key.items()], with_results=True, raise_errors=False)
    pending = set(by_key)
    failed = sum(1 for r in records.values() if r.get("status") == "error")
    done = already
    prog.line(f"imagio batch: {len(todo)} case(s) to run on {engine.get('kind')} with {len(info)} worker(s)"
              + (f", {already} complete already" if already else "") + f"; writing {out}")
    t_last_events = 0.0
    last_done = -1
    started: set[str] = set()
    retried: dict[str, int] = {}
    try:
        while pending:
            for f, result in completed.next_batch(block=False):
                pending.discard(f.key)
                s = by_key[f.key]
                f.release()
                if isinstance(result, tuple) and len(result) == 3 and isinstance(result[1], BaseException):
                    result = result[1]  # as_completed(raise_errors=False) hands over (type, exception, traceback)
                if isinstance(result, dict):
                    rec = result
                else:  # the task did not return: its worker died (KilledWorker) or it was lost
                    if isinstance(result, KilledWorker) and retried.get(s["case_id"], 0) < BYSTANDER_RETRIES \
                            and _deaths_while_running(client, batch_token, s["case_id"]) == 0:
                        # the scheduler counts every case assigned to a dying worker, also those only waiting there
                        # or finished there: a bystander runs again (a fresh key), not blamed for another's crash
                        retried[s["case_id"]] = n = retried.get(s["case_id"], 0) + 1
                        key = f"imagio-batch-{s['case_id']}-{batch_token[:8]}-retry{n}"
                        prog.line(f"case {s['case_id']} ({s['step']}): a worker it was waiting on died while "
                                  "running another case; running it again")
                        by_key[key] = s
                        pending.add(key)
                        completed.add(submit(s, key))
                        continue
                    if isinstance(result, KilledWorker):
                        msg = _death_message(client, batch_token, s["case_id"], result, limits)
                    else:
                        msg = f"{type(result).__name__}: {str(result).splitlines()[0] if str(result) else ''}"
                    rec = error_record(s, msg)
                    publish_record(str(out), rec, msg + "\n")
                records[s["case_id"]] = rec
                recomputed[s["case_id"]] = True
                done += 1
                if rec["status"] == "error":
                    failed += 1
                    prog.line(f"case {s['case_id']} ({s['step']}) failed: {rec['message']}")
            now = time.perf_counter()
            if now - t_last_events > 1.0 or (done != last_done):
                t_last_events = now
                started = _running_cases(client, batch_token)
                last_done = done
            running = len({by_key[k]["case_id"] for k in pending} & started)
            prog.update(done, failed, running)
            if pending:
                time.sleep(0.2)
    except BaseException as e:  # Ctrl-C, SIGTERM (imagio.cli.Terminated): stop, keep what finished
        if not isinstance(e, KeyboardInterrupt) and type(e).__name__ != "Terminated":
            raise
        with contextlib.suppress(Exception):
            client.cancel(list(completed.futures))
        prog.line("imagio batch: interrupted; finished cases are kept (run again with --resume)")
        return e
    return None


# ------------------------------------------------------------------------------------------ command line
def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "batch", help="run any step over a CSV manifest of cases on Dask (local workers or a cluster), resumable; "
                      "writes DIR/<case_id>/<step>/, summary.csv, batch.json, cohort.html",
        description="Each manifest row is one case: columns case_id, step (segment, lungnav, margin, ablation-zone, "
                    "ablation-plan, ablation-replan, export-dicom, demo) and the step's options with underscores "
                    "(pre_ct for --pre-ct). Relative paths are relative to the manifest's folder; empty cells are "
                    "left out; several values of one option are separated by ';'. Exit 0: every case ok; 1: some "
                    "failed (summary still written); 2: bad manifest; 130: interrupted (finished cases kept, "
                    "--resume runs the rest).")
    p.add_argument("--manifest", required=True, help="CSV file: case_id,step,<option>,...")
    # dest batch_out: the batch applies its own --out policy (--resume continues a non-empty folder)
    p.add_argument("--out", dest="batch_out", required=True,
                   help="output folder (new, or the folder of an earlier batch with --resume or --overwrite)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=number(min=1, max=1024, integer=True),
                   help=f"local worker processes (default: the machine's cores, here {machine_cores()})")
    g.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (its workers "
                   "must see the inputs and --out at the same paths)")
    p.add_argument("--resume", action="store_true", help="keep the cases of an earlier batch in --out that finished "
                   "with unchanged inputs and options; run the others; rewrite the summary")
    p.add_argument("--overwrite", action="store_true", help="recompute every case in the folder of an earlier "
                   "batch (each case folder is replaced when its new run ends)")
    p.add_argument("--memory-limit-gb", type=number(min=0.1, max=1e5, unit="GB"), help="memory limit per local worker in GB; a case above it "
                   "kills its worker and becomes an error row (default: the machine's memory shared out)")
    p.add_argument("--quiet", action="store_true", help="no progress on the terminal")
    p.set_defaults(func=cmd_batch)


def cmd_batch(args) -> int:
    if not getattr(args, "debug", False):  # Dask's own INFO/WARNING lines would drown the progress
        logging.getLogger("distributed").propagate = False  # (its own handler, silenced by LocalCluster, stays)
    table = run(args.manifest, args.batch_out, workers=args.workers, scheduler=args.scheduler, resume=args.resume,
                overwrite=args.overwrite, memory_limit_gb=args.memory_limit_gb,
                progress=False if args.quiet else None)
    c = table.counts()
    out = Path(args.batch_out)
    print(f"batch: {len(table)} case(s): {c['ok']} ok, {c['error']} failed, {c['skipped']} skipped (complete "
          f"before); wrote {out / 'summary.csv'}, {out / 'batch.json'}, {out / 'cohort.html'}")
    for r in table:
        if r["status"] == "error":
            print(f"  {r['case_id']} ({r['step']}): {r['message']}")
    return table.exit_status


__all__ = ["run", "register_cli", "cmd_batch", "LOCAL_DASK_CONFIG"]
