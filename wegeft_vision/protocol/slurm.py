"""`protocol --launcher slurm`: the request's workers as SLURM jobs, submitted with submitit, sharing the study storage.

The launching is submitit's (sbatch options, the job folder with each job's log and result); the coordination is the
protocol's own (Optuna on the shared storage: a journal file in the run folder unless `--storage` names a database).
`OUT/slurm/jobs.json` lists every job submitted for the run folder, so the same command again attaches to the jobs
still in the queue and submits only what is missing; nothing finished is trained again (finished points are in the
storage, finished runs in their folders).

In a job, a worker stopped by the scheduler gives its grid point back (`preemption`): on SIGTERM (preemption with
requeue, `scontrol requeue`, `scancel`, the time limit) it only exits, SLURM decides what comes next; on the warning
signal ahead of the time limit (sbatch `--signal`, USR1 or USR2) it also requeues its own job. A requeued job runs
the same worker again, which resumes the interrupted run from its last epoch checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..files import write_atomic
from . import preemption
from .request import Request

SLURM_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
JOBS_FILE = Path("slurm") / "jobs.json"
# sbatch settings unless the preset's `slurm:` or `--slurm` say otherwise: one task per job (Lightning launches the
# DDP processes of `--devices` itself); the warning signal two minutes before the time limit
DEFAULTS: dict[str, Any] = {"job_name": "wegeft-vision", "ntasks_per_node": 1, "signal_delay_s": 120}


class SlurmWorker:
    """The callable each job runs: one protocol worker of `request`, stopping cleanly on the scheduler's signals."""

    def __init__(self, request: Request) -> None:
        self.request = request

    def __call__(self) -> int:
        from .launch import run

        threads = os.environ.get("SLURM_CPUS_PER_TASK")
        if threads:  # as many threads as CPUs granted: oversubscribed CPUs crawl
            import torch

            torch.set_num_threads(int(threads))
        try:
            return run(self.request, signals=SLURM_SIGNALS)
        except KeyboardInterrupt:
            name = preemption.received()
            if name is None:
                raise
            job = os.environ.get("SLURM_JOB_ID", "?")
            if name != "SIGTERM":  # the time limit is near: come back later, from the last checkpoint
                subprocess.run(["scontrol", "requeue", job], check=False)
                print(f"job {job}: {name} before the time limit; grid point given back, job requeued", flush=True)
            else:
                print(f"job {job}: stopped by {name}; grid point given back", flush=True)
            return preemption.EXIT_CODE

    def checkpoint(self) -> Any:  # submitit's own requeue hook: the state lives in the storage and the run folders
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmWorker(self.request))


def sbatch_options(preset_options: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The jobs' sbatch options: `DEFAULTS`, then the preset's `slurm:`, then `--slurm KEY=VALUE` (dashes read as
    underscores). submitit's named parameters stay named, any other sbatch option goes to its
    `additional_parameters`.

    Raises:
        ValueError: an option submitit refuses outright (`folder`, `command`).
    """
    try:
        from submitit import SlurmExecutor
    except ImportError as err:
        raise ValueError("--launcher slurm submits with submitit: pip install 'wegeft-vision[slurm]'") from err

    options = {**DEFAULTS, **preset_options, **{k.replace("-", "_"): v for k, v in given.items()}}
    bad = {"folder", "command"} & set(options)
    if bad:
        raise ValueError(f"--slurm {sorted(bad)[0]}: set by the launcher, not an sbatch option to choose")
    named = SlurmExecutor._valid_parameters()
    extra = {k: v for k, v in options.items() if k not in named}
    options = {k: v for k, v in options.items() if k in named}
    if extra:
        options["additional_parameters"] = {**options.get("additional_parameters", {}), **extra}
    return options


def queued(jobs: list[str]) -> list[str]:
    """The ones of `jobs` still in SLURM's queue (pending, running, requeued)."""
    try:
        result = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=False)
    except FileNotFoundError as err:
        raise ValueError("--launcher slurm: no `squeue` here; run the command where SLURM's commands are") from err
    if result.returncode:
        raise ValueError(f"--launcher slurm: squeue failed ({result.returncode}): {result.stderr.strip()}")
    present = set(result.stdout.split())
    return [job for job in jobs if job in present]


def _read_jobs(out: Path) -> list[str]:
    path = out / JOBS_FILE
    if not path.is_file():
        return []
    try:
        return [str(job) for job in json.loads(path.read_text())["jobs"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is damaged ({err}): remove it once its jobs have left the queue") from err


def submit(request: Request, count: int, options: dict[str, Any]) -> list[str]:
    """Submit `count` worker jobs of `request`; their ids (also appended to `OUT/slurm/jobs.json`)."""
    import submitit

    executor = submitit.SlurmExecutor(folder=request.out / "slurm" / "%j", python=sys.executable)
    executor.update_parameters(**options)
    worker_request = dataclasses.replace(request, progress=False, announce=True)
    ids: list[str] = []
    try:
        for _ in range(count):
            try:
                ids.append(str(executor.submit(SlurmWorker(worker_request)).job_id))
            except Exception as err:  # noqa: BLE001 - sbatch's refusal (an unknown partition, a bad option)
                raise ValueError(f"sbatch refused a worker job: {' '.join(str(err).split())[-800:]}") from err
    finally:
        if ids:  # recorded even when a later one is refused: the next run attaches to them
            write_atomic(request.out / JOBS_FILE, json.dumps({"jobs": _read_jobs(request.out) + ids}, indent=1))
    return ids


def launch(request: Request, workers: int, options: dict[str, Any], detach: bool = False) -> int:
    """Have `workers` jobs working on the request (attach to those still queued, submit the missing ones), then,
    unless `detach`, wait for them with the local run's progress lines.

    Returns:
        0 when everything asked for is done; 1 when the jobs left the queue with work undone (their logs are named).

    Raises:
        ValueError, FileNotFoundError: an input that cannot work (as a local run), or an sbatch option refused.
        ValueError: also when SLURM's commands are missing or fail (no cluster reachable).
    """
    from .launch import pin, prepare

    if workers < 1:
        raise ValueError(f"--workers should be at least 1, got {workers}")
    protocol = prepare(request)
    pin(protocol)
    protocol.storage  # noqa: B018 - the schema created once, before the jobs race to create it
    options = sbatch_options(protocol.preset.slurm, options)
    queued([])  # SLURM reachable, before anything is submitted
    alive = queued(_read_jobs(request.out))
    finished = protocol.finished()
    if finished and not alive:
        print(protocol.summary(), flush=True)
        print("everything asked for is done; nothing to submit", flush=True)
        return 0
    if alive:
        print(f"attached to {len(alive)} job(s) still in the queue: {', '.join(alive)}", flush=True)
    new = submit(request, workers - len(alive), options) if len(alive) < workers and not finished else []
    if new:
        print(f"submitted {len(new)} job(s): {', '.join(new)} (logs: {request.out / 'slurm'}/<job id>/)", flush=True)
    if detach:
        print("detached; the same command attaches again", flush=True)
        return 0
    return wait(protocol, alive + new)


def wait(protocol: Any, jobs: list[str]) -> int:
    """Print the progress line whenever a run finishes until the jobs have left the queue; 0 if all is done."""
    last = ""
    while True:
        remaining = queued(jobs)
        line = protocol.summary()
        counts = line.partition(" elapsed")[0]  # `[search i/n · final j/m]`: a new line when a run is done
        if counts != last:
            print(line, flush=True)
            last = counts
        if not remaining:
            break
        time.sleep(protocol.poll)
    if protocol.finished():
        return 0
    logs = protocol.out / "slurm"
    print(
        f"the jobs left the queue with work undone (cancelled or failed; logs in {logs}/<job id>/): "
        "rerun the same command to submit what is missing",
        flush=True,
    )
    return 1
