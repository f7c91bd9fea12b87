"""Where a study's runs execute: ``local`` worker processes or ``ray`` tasks. Both land results in the same
layout (``STORE/runs/<run_id>``); a run that crashes fails alone and the study goes on.

- local: N slots, each a ``gst run`` subprocess with its own thread budget (``OMP_NUM_THREADS`` and
  ``train.threads``); with CUDA, ``--runs-per-gpu R`` packs R slots onto each visible GPU
  (``CUDA_VISIBLE_DEVICES`` per slot). The process log of each run goes to ``STUDY_DIR/logs/<run_id>.log``.
- ``sweep`` expands a study (``gstlab.study``), writes its index and runs what is unfinished here.
- ray: each run is a Ray task requesting ``num_cpus=threads`` (default 1) and ``num_gpus=1/R`` when GPUs are used;
  the task executes the run in the Ray worker, so the store must be on a file system every node sees. Before any
  run is submitted, the address must answer as a Ray cluster (token authentication named when it refuses) and some
  node must hold one run's request. A run whose node or worker process dies is resubmitted (``RAY_RETRIES``) and
  resumes from its checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gstlab import config as C
from gstlab import portable, preflight, recovery, sinks, store
from gstlab.errors import one_line, warn
from gstlab.progress import EpochProgress
from gstlab.study import Study, StudyRun, expand, run_status, self_contained, setting_notes, write_index
from gstlab.surprises import surprises


class ExecutorError(RuntimeError):
    """The executor cannot start (e.g. an unreachable Ray address); raised before any run starts."""


@dataclass(frozen=True)
class Outcome:
    run_id: str
    status: str  # finished | failed
    detail: str = ""
    executed: bool = True  # False: another process (a study sharing the store) finished it meanwhile


@dataclass(frozen=True)
class Resources:
    workers: int = 1
    threads: int = 1  # per worker
    runs_per_gpu: int = 1
    gpus: int = 0  # GPUs visible to this machine (local) or wanted per cluster (ray: >0 means request GPUs)


def default_threads(executor: str) -> int:
    """Threads per run without --threads-per-worker: all cores locally (one run at a time by default); 1 on Ray,
    which every node holds, so the numbers of a CPU study do not depend on the sizes of the cluster's nodes."""
    return 1 if executor == "ray" else max(1, os.cpu_count() or 1)


def detect_gpus() -> int:
    import torch  # noqa: PLC0415

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _progress(runs: list[StudyRun], store_dir: Path, enabled: bool) -> EpochProgress:
    return EpochProgress({r.run_id: (store_dir / "runs" / r.run_id, r.cfg.train.epochs) for r in runs}, enabled)


def run_name(run: StudyRun) -> str:
    return f"{run.label} seed {run.seed} ({run.run_id})"


POLL_S = 1.0  # seconds between reads of the running runs' epochs


# ---------------------------------------------------------------------------------------------------- local


def _command(config_path: Path, run_dir: Path, threads: int, outcome: Path) -> list[str]:
    return [sys.executable, "-m", "gstlab.cli", "run", "--config", str(config_path), "--out", str(run_dir),
            "--no-progress", "--set", f"train.threads={threads}", "--outcome-file", str(outcome)]


def _outcome_file(study_dir: Path, run: StudyRun) -> Path:
    """Where a worker says whether it executed ``run``: one per sweep process (two sweeps of one study at once
    each read their own)."""
    return study_dir / "logs" / f"{run.run_id}.{os.getpid()}.outcome.json"


def _slot_env(slot: int, res: Resources) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(res.threads), MKL_NUM_THREADS=str(res.threads))
    if res.gpus:
        env["CUDA_VISIBLE_DEVICES"] = str((slot // res.runs_per_gpu) % res.gpus)
    return env


def run_local(runs: list[StudyRun], store_dir: Path, study_dir: Path, res: Resources,
              progress: bool = True, on_done=lambda outcome: None) -> list[Outcome]:
    """Execute ``runs`` in at most ``res.workers`` subprocesses at a time; ``on_done(outcome)`` after each."""
    pending = list(runs)
    active: dict[int, Worker] = {}
    outcomes: list[Outcome] = []
    (study_dir / "logs").mkdir(parents=True, exist_ok=True)
    (study_dir / "configs").mkdir(parents=True, exist_ok=True)
    bar, polled = _progress(runs, store_dir, progress), time.monotonic()
    try:
        with _sigterm_as_interrupt():
            while pending or active:
                for slot in range(res.workers):
                    if slot not in active and pending:
                        active[slot] = _start(pending.pop(0), slot, store_dir, study_dir, res)
                time.sleep(0.2)
                if time.monotonic() - polled >= POLL_S:
                    bar.update([w.run.run_id for w in active.values()])
                    polled = time.monotonic()
                for slot, worker in list(active.items()):
                    if worker.proc.poll() is None:
                        continue
                    worker.log.close()
                    outcomes.append(_local_outcome(worker, store_dir, study_dir))
                    on_done(outcomes[-1])
                    del active[slot]
                    bar.run_finished(worker.run.run_id, outcomes[-1].status, run_name(worker.run))
    finally:
        _stop(active.values())  # the sweep ends early (an error, Ctrl-C, SIGTERM): no worker outlives it
    bar.close()
    return outcomes


@dataclass
class Worker:
    run: StudyRun
    proc: subprocess.Popen
    log: object  # its log file, open for appending
    log_start: int  # where this attempt's output begins in the log


STOP_WAIT_S = 30.0  # a worker stopped with SIGINT saves nothing more; it is killed after this long


def _stop(workers) -> None:
    """Interrupt the workers still running (they stop like Ctrl-C: a rerun resumes from their checkpoints)."""
    workers = list(workers)
    deadline = time.monotonic() + 2.0  # after Ctrl-C in a terminal they have the SIGINT already
    while time.monotonic() < deadline and any(w.proc.poll() is None for w in workers):
        time.sleep(0.1)
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGINT)
    for w in workers:
        try:
            w.proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()
        w.log.close()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM to the sweep (a job scheduler's stop) ends it as Ctrl-C does, with its workers."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _start(run: StudyRun, slot: int, store_dir: Path, study_dir: Path, res: Resources):
    config_path = study_dir / "configs" / f"{run.run_id}.yaml"
    store.atomic_write_text(config_path, C.dump_yaml(run.cfg))
    _outcome_file(study_dir, run).unlink(missing_ok=True)
    log = open(study_dir / "logs" / f"{run.run_id}.log", "ab")  # noqa: SIM115 (closed when the process ends)
    start = log.tell()
    command = _command(config_path, store_dir / "runs" / run.run_id, res.threads, _outcome_file(study_dir, run))
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_slot_env(slot, res))
    return Worker(run, proc, log, start)


def failure_detail(summary: dict | None) -> str:
    """What a failed run's summary says ended it (divergence, a callback's EndRun), for the sweep's output."""
    reason = (summary or {}).get("failure") or "failed"
    return f"{reason}; see its summary.json"


def _local_outcome(worker: Worker, store_dir: Path, study_dir: Path) -> Outcome:
    run, code = worker.run, worker.proc.returncode
    said = _outcome_file(study_dir, run)
    executed = (store.read_json_or_none(said) or {}).get("executed", True)
    said.unlink(missing_ok=True)
    if code == 0:
        return Outcome(run.run_id, "finished", executed=bool(executed))
    log = study_dir / "logs" / f"{run.run_id}.log"
    summary = recovery.verify_finished(store_dir / "runs" / run.run_id, run_id=run.run_id)[0] if code == 1 else None
    if summary is not None and summary["status"] == "failed":  # its files verified
        return Outcome(run.run_id, "failed", failure_detail(summary), executed=bool(executed))
    with open(log, "rb") as f:  # this attempt's output only: the log keeps every attempt's
        f.seek(worker.log_start)
        tail = f.read().decode(errors="replace").strip().splitlines()[-1:]
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() \
        else f"exited with status {code}"
    return Outcome(run.run_id, "failed", f"worker {how}: {' '.join(tail) or 'no output'} (log: {log})")


# ------------------------------------------------------------------------------------------------------ ray


RAY_RETRIES = 3  # resubmissions of a run whose node or worker process died (it resumes from its checkpoint)
RAY_CHECK_S = 10.0  # while waiting: how often to check that a live node can still hold the pending runs
TOKEN_HINT = ("clusters started by `ray start` with Ray 2.60 use token authentication: export RAY_AUTH_MODE=token "
              "and give the cluster's token (~/.ray/auth_token on this machine, or RAY_AUTH_TOKEN)")


def connect_ray(address: str | None, res: Resources):
    """Connect to the cluster at ``address`` (or start a local instance); ExecutorError if it does not answer as a
    Ray cluster or no node can hold one run's request."""
    try:
        import ray  # noqa: PLC0415
    except ImportError as err:
        raise ExecutorError("--executor ray needs Ray: pip install 'gstlab[ray]'") from err
    if not ray.is_initialized():
        # portable mode: Ray's workers are not our children, so they get the pinned environment explicitly
        env = {"runtime_env": {"env_vars": {**portable.PINNED_ENV, portable.SWITCH: "1"}}} if portable.requested() \
            else {}
        if address and address != "auto":
            _check_reachable(address)
            if not address.startswith("ray://"):
                _check_gcs(address)
        try:
            if address:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **env)
            else:
                ray.init(num_cpus=max(res.threads, os.cpu_count() or 1), include_dashboard=False,
                         log_to_driver=False, logging_level=logging.WARNING, **env)
        except Exception as err:  # noqa: BLE001 (Ray raises several types for an unreachable cluster)
            hint = f"; {TOKEN_HINT}" if os.environ.get("RAY_AUTH_MODE") != "token" else ""
            raise ExecutorError(f"--address {address}: cannot reach a Ray cluster ({one_line(err)}){hint}") from None
    unmet = unmet_request(ray_options(res), _alive_nodes(ray))
    if unmet:
        raise ExecutorError(unmet)
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """TCP-connect to ``[ray://]host:port`` first: ray.init retries an unreachable address for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ExecutorError(f"--address {address}: expected host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ExecutorError(f"--address {address}: cannot reach a Ray cluster ({err})") from None


# Asks the GCS at argv[1] for its cluster id and prints the error, if any. It runs in a child process: Ray's
# client logs every retry on stderr and reads its timeouts from the environment once per process. The client is
# Ray's internal one (tested with 2.60): on a Ray without it the probe stays silent and ray.init decides.
_GCS_PROBE = """
import sys
try:
    from ray._raylet import InnerGcsClient
    connect = InnerGcsClient.standalone
except (ImportError, AttributeError):
    sys.exit(0)
try:
    connect(sys.argv[1], None, 3000)
except Exception as err:
    print(type(err).__name__ + ": " + (str(err).strip().splitlines() or [""])[0])
"""


def _check_gcs(address: str, timeout: float = 30.0) -> None:
    """Fail in seconds, in one line, when ``address`` does not answer as a Ray cluster (ray.init would retry for
    20 s or more, logging each try) or refuses us (token authentication)."""
    env = {**os.environ, "RAY_gcs_rpc_server_connect_timeout_s": "2"}
    try:
        done = subprocess.run([sys.executable, "-c", _GCS_PROBE, address], env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ExecutorError(f"--address {address}: no Ray cluster answered within {timeout:.0f} s") from None
    answer = done.stdout.strip()  # stderr holds Ray's log lines, also when the cluster answered
    if done.returncode and not answer:  # the probe itself failed (e.g. Ray does not import)
        answer = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    if answer.startswith("AuthenticationError"):
        raise ExecutorError(f"--address {address}: the Ray cluster refused the connection; {TOKEN_HINT}")
    if answer:
        raise ExecutorError(f"--address {address}: no Ray cluster answers there ({answer})")


def _alive_nodes(ray) -> list[dict]:
    return [node for node in ray.nodes() if node.get("Alive")]


def unmet_request(options: dict, nodes: list[dict]) -> str | None:
    """None when one of ``nodes`` (``ray.nodes()`` entries) holds a run's request (``ray_options``); else one line
    naming the request and the nodes."""
    want = {"CPU": options["num_cpus"], "GPU": options["num_gpus"]}
    if any(all(node["Resources"].get(key, 0) >= need for key, need in want.items()) for node in nodes):
        return None
    gpus = f" and {want['GPU']:g} GPU (--gpus, --runs-per-gpu)" if want["GPU"] else ""
    have = ", ".join(f"{n['Resources'].get('CPU', 0):g} CPUs/{n['Resources'].get('GPU', 0):g} GPUs"
                     for n in nodes) or "none alive"
    return (f"--threads-per-worker {want['CPU']:g}: each run asks for {want['CPU']:g} CPUs{gpus}, which no node of "
            f"the Ray cluster has (nodes: {have}); ask for less or add a node that has them")


def _ray_task(cfg_dict: dict, run_dir: str, threads: int) -> tuple[str, bool, str]:
    """Body of a Ray task: execute one run in this worker; returns (status, executed, detail)."""
    from gstlab.runner import run_or_skip  # noqa: PLC0415

    cfg = C.from_dict(C.RunConfig, cfg_dict)
    cfg = C.validate(C.replace(cfg, train=C.replace(cfg.train, threads=threads)))  # as a local worker's --set
    if C.run_id(cfg) != Path(run_dir).name:  # e.g. train.precision=auto resolves differently on this worker
        raise RuntimeError(f"run {Path(run_dir).name} has id {C.run_id(cfg)} on this worker (precision "
                           f"{C.resolved_precision(cfg.train)}); set train.precision explicitly")
    summary, executed = run_or_skip(cfg, Path(run_dir), progress=False)
    status = str(summary.get("status", "failed"))
    return status, executed, "" if status == "finished" else failure_detail(summary)


def ray_options(res: Resources) -> dict:
    """Per-run Ray task options: ``threads`` CPUs and, with GPUs, a 1/runs_per_gpu share of one; a run whose node
    or worker dies is resubmitted (an exception raised by the run itself is not: it would fail again)."""
    return {"num_cpus": res.threads, "num_gpus": 1.0 / res.runs_per_gpu if res.gpus else 0,
            "max_retries": RAY_RETRIES, "retry_exceptions": False}


def run_ray(runs: list[StudyRun], store_dir: Path, res: Resources, address: str | None,
            progress: bool = True, on_done=lambda outcome: None) -> list[Outcome]:
    ray = connect_ray(address, res)
    task = ray.remote(_ray_task).options(**ray_options(res))
    refs = {task.remote(C.to_dict(r.cfg), str((store_dir / "runs" / r.run_id).resolve()), res.threads): r
            for r in runs}
    outcomes: list[Outcome] = []
    bar = _progress(runs, store_dir, progress)
    waiting = list(refs)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1, timeout=RAY_CHECK_S)
        stranded = [] if done else _stranded(ray, waiting, res)
        if not done:
            bar.update([refs[ref].run_id for ref in waiting])
        for ref in done or stranded:
            outcomes.append(_ray_outcome(ray, ref, refs[ref], stranded))
            on_done(outcomes[-1])
            bar.run_finished(refs[ref].run_id, outcomes[-1].status, run_name(refs[ref]))
        waiting = [ref for ref in waiting if ref not in stranded]
    bar.close()
    return outcomes


def _stranded(ray, waiting: list, res: Resources) -> list:
    """``waiting`` when no live node can hold a run's request any more (a node died): cancelled, else []."""
    if unmet_request(ray_options(res), _alive_nodes(ray)) is None:
        return []
    for ref in waiting:
        ray.cancel(ref, force=True)
    return waiting


def _ray_outcome(ray, ref, run: StudyRun, stranded: list) -> Outcome:
    if ref in stranded:
        return Outcome(run.run_id, "failed", "no live node of the Ray cluster can hold it any more; rerun the sweep "
                                             "when one can (it resumes from its checkpoint)")
    try:
        status, executed, detail = ray.get(ref)
        return Outcome(run.run_id, status, detail, executed)
    except Exception as err:  # noqa: BLE001 (a crashed task fails its run only)
        return Outcome(run.run_id, "failed", f"{type(err).__name__}: {one_line(err)} (after up to "
                                             f"{RAY_RETRIES} retries; rerun the sweep to resume it)")


# --------------------------------------------------------------------------------------------------- sweep


def _check_gpu_choice(runs: list[StudyRun], res: Resources) -> None:
    """ConfigError for a run that names its GPU (``cuda:N``) in a sweep that gives each run one GPU: the run
    sees only that GPU (CUDA_VISIBLE_DEVICES, as 0), so ``cuda:1`` would fail in every run after it started."""
    if not res.gpus:
        return
    for run in runs:
        if run.cfg.train.device.startswith("cuda:"):
            raise C.ConfigError(f"train.device: {run.cfg.train.device!r} (setting {run.setting}); a sweep gives each "
                                f"run its GPU, so a run may not name one; allowed: auto, cuda or cpu")


def tensorboard_dir(study_dir: Path, run: StudyRun) -> Path:
    """Where ``gst sweep --tensorboard`` puts a run's event files: one TensorBoard run per study run, named by
    its label, seed and id, so ``tensorboard --logdir STUDY_DIR`` compares them (and filters by label)."""
    return study_dir / sinks.TENSORBOARD_DIR / run.label.replace("/", "-") / f"seed{run.seed}-{run.run_id}"


def _export_tensorboard(study_dir: Path, store_dir: Path, run: StudyRun) -> None:
    sinks.export_missing(store_dir / "runs" / run.run_id, tensorboard_dir(study_dir, run))


def check_out_dirs(study_dir: Path, store_dir: Path | None) -> None:
    """OutDirError for a study directory or store that could not be made (``gst sweep --dry-run`` checks too)."""
    for path, flag in ((study_dir, "--out"), (store_dir, "--store")):
        if path is not None:
            store.check_dir(Path(path), flag)


def _settle_found(run: StudyRun, run_dir: Path, status: str, threads: int) -> None:
    """An ended run found unsettled (a manifest without checksums, e.g. deleted; a checkpoint left) is settled as
    `gst run` on it would, its config.yaml as a worker writes it (the sweep's threads); settled ones are told apart
    by their manifest and leftovers (the index has just verified their files). One that cannot be settled (a
    read-only store) is a warning: the sweep goes on."""
    if recovery.settled(run_dir, {"status": status}):
        return
    from gstlab.runner import RunDirError, settle_ended  # noqa: PLC0415

    try:
        settle_ended(C.validate(C.replace(run.cfg, train=C.replace(run.cfg.train, threads=threads))), run_dir)
    except (OSError, RunDirError) as err:
        warn(f"{run_dir}: ended, but could not be settled ({one_line(err)}); `gst run` on it, or this sweep "
             f"again, settles it")


def threads_notes(runs: list[StudyRun], resources: Resources) -> list[str]:
    """Warnings for a study's own ``train.threads`` that the sweep's threads per worker replace (locally and on
    Ray; the thread count is one of the conditions for bit-identical CPU results). Said, not refused: every
    config.yaml a sweep wrote holds the threads it ran with, so a study built from them carries them."""
    return list(dict.fromkeys(
        f"setting {r.setting!r}: its train.threads {r.cfg.train.threads} is replaced by the sweep's "
        f"{resources.threads} thread(s) per run (--threads-per-worker; default: all cores locally, 1 on Ray)"
        for r in runs if r.cfg.train.threads not in (None, resources.threads)))


def check_runs(runs: list[StudyRun], resources: Resources, executor: str, store_dir: Path,
               tensorboard: bool = False, notes: Sequence[str] = ()) -> None:
    """What a sweep checks before it writes anything (``gst sweep --dry-run`` too, before it estimates): model
    sizes, layer names and probes (preflight; for a local sweep's runs not yet ended in ``store_dir`` also their
    device and a CPU run's Lanczos memory), the GPU a run names, TensorBoard where asked; then one warning per
    surprising setting."""
    _check_gpu_choice(runs, resources)
    def ended(run_id: str) -> bool:
        return run_status(store_dir / "runs" / run_id) in recovery.FINAL

    idle = preflight.check_study(runs, ended if executor == "local" else None)
    if tensorboard:
        sinks.require_tensorboard("--tensorboard")
    asking = next((r for r in runs if r.cfg.train.tensorboard), None)
    if asking is not None:
        sinks.require_tensorboard(f"setting {asking.setting!r}: train.tensorboard")
    surprising = dict.fromkeys(line for run in runs for line in surprises(run.cfg))
    for line in [*notes, *threads_notes(runs, resources), *surprising, *idle]:
        warn(line)


def sweep(study: Study, raw: dict, study_dir: Path, executor: str, resources, address: str | None = None,
          store_dir: Path | None = None, progress: bool = True, tensorboard: bool = False) -> list:
    """Run every unfinished run of ``study``; returns the outcomes of the runs executed now. ``tensorboard``:
    each ended run's metrics also go to TensorBoard event files under ``study_dir/tensorboard``."""
    runs = expand(study)  # every config is validated before anything starts
    check_runs(runs, resources, executor, Path(store_dir or study_dir), tensorboard, setting_notes(study))
    if executor == "ray":
        connect_ray(address, resources)
    check_out_dirs(study_dir, store_dir)  # both checked before either is made
    store.make_dir(study_dir, "--out")
    if store_dir is not None:
        store.make_dir(Path(store_dir), "--store")
    store_dir = Path(store_dir or study_dir)
    store.write_checked_text(study_dir / "study.yaml", self_contained(raw, study))  # expands the same from there
    rows = write_index(study_dir, study, runs, store_dir)
    final = {row["run_id"]: row["status"] for row in rows if row["status"] in recovery.FINAL}
    todo = [r for r in runs if r.run_id not in final]
    by_id = {r.run_id: r for r in runs}
    unkept = [rid for rid, status in final.items() if status == "finished" and recovery.unkept_epochs(
        by_id[rid].cfg.train.keep_checkpoints, store_dir / "runs" / rid, by_id[rid].cfg.train.epochs)]
    if unkept:
        warn(f"train.keep_checkpoints: {len(unkept)} finished run(s) lack epochs the study asks to keep (e.g. "
             f"{unkept[0]}); the field is not part of the run id, so a finished run is not rerun: give another "
             f"--out and --store to train them anew with them")
    for rid, status in final.items():
        _settle_found(by_id[rid], store_dir / "runs" / rid, status, resources.threads)
        if by_id[rid].cfg.train.tensorboard:  # found finished: the events its config asks for
            sinks.export_missing(store_dir / "runs" / rid)
        if tensorboard:
            _export_tensorboard(study_dir, store_dir, by_id[rid])

    def on_done(outcome) -> None:  # keep index.csv true while the sweep runs (and if it is killed)
        final[outcome.run_id] = run_status(store_dir / "runs" / outcome.run_id)
        write_index(study_dir, study, runs, store_dir, final)
        if tensorboard and final[outcome.run_id] in recovery.FINAL:  # a crashed run ends in a later sweep
            _export_tensorboard(study_dir, store_dir, by_id[outcome.run_id])

    try:
        if executor == "ray":
            return run_ray(todo, store_dir, resources, address, progress, on_done)
        return run_local(todo, store_dir, study_dir, resources, progress, on_done)
    finally:
        write_index(study_dir, study, runs, store_dir, final)
