"""Worker processes of one protocol (`--workers N`, `--gpus 0,1,...`): each runs the same request on the same storage.

Each worker gets one share of the CPU threads (or its GPUs) and dies with its parent (Linux `PR_SET_PDEATHSIG`): a
parent killed by the scheduler leaves no orphan training on, and the workers' trials are released as dead-worker
trials on the next start, whose runs resume from their epoch checkpoints.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

import yaml

from .request import Request

PR_SET_PDEATHSIG = 1


def worker_command(request: Request) -> list[str]:
    """The command line of a worker of `request`: `wegeft-vision protocol|search` with every option of the request
    (recipe settings as `--set`), as one worker, without progress bars. Parsing it gives the request back."""
    command = ["protocol" if "final" in request.stages else "search", "--config", str(request.preset)]
    command += ["--out", str(request.out)]
    for option, values in (("--tasks", request.tasks), ("--methods", request.methods), ("--seeds", request.seeds)):
        if values:
            command += [option, *map(str, values)]
    options = {
        "--benchmark": request.benchmark,
        "--data-root": request.data_root,
        "--splits-dir": request.splits_dir,
        "--storage": request.storage,
    }
    command += [text for option, value in options.items() if value is not None for text in (option, str(value))]
    for key, value in request.overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("\n...\n").rstrip("\n")
        command += ["--set", f"{key}={text}"]  # YAML that reads back as `value`
    if request.final_includes_val is not None:
        command.append("--final-includes-val" if request.final_includes_val else "--no-final-includes-val")
    command += ["--devices", str(request.devices), "--poll", repr(request.poll), "--heartbeat", str(request.heartbeat)]
    command += ["--checkpoint-every", str(request.checkpoint_every), "--pack", str(request.pack)]
    return [*command, "--worker", "--no-progress"]


def _die_with_parent() -> None:
    """In the child before `exec`: the kernel kills it when its parent dies, however the parent ends."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: workers notice a dead parent only at their next trial
        pass


def gpu_groups(gpus: str | None, devices: int) -> list[str]:
    """`CUDA_VISIBLE_DEVICES` of each worker: one per GPU, or per group of `devices` GPUs.

    Raises:
        ValueError: the GPUs do not split into groups of `devices`.
    """
    ids = [g for g in (gpus or "").split(",") if g]
    if len(ids) % devices:
        raise ValueError(f"--gpus {gpus} does not split into workers of --devices {devices} GPUs each")
    return [",".join(ids[i : i + devices]) for i in range(0, len(ids), devices)]


def spawn_workers(request: Request, workers: int, groups: Sequence[str] = ()) -> int:
    """Run the request in `len(groups) or workers` worker processes (`worker_command`) and wait for all of them.

    Returns:
        The highest exit code of the workers; 130 after a Ctrl-C (the workers got it too and failed their trials).
    """
    count = len(groups) or workers
    command = [sys.executable, "-m", "wegeft_vision.cli", *worker_command(request)]
    threads = str(max(1, (os.cpu_count() or 1) // count))
    processes = []
    for index in range(count):
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", threads)  # workers x threads = cores: oversubscribed CPUs crawl
        if groups:
            env["CUDA_VISIBLE_DEVICES"] = groups[index]
        processes.append(subprocess.Popen(command, env=env, preexec_fn=_die_with_parent))  # noqa: PLW1509
    print(f"started {count} workers (pids {', '.join(str(p.pid) for p in processes)})", flush=True)
    try:
        return max(p.wait() for p in processes)
    except KeyboardInterrupt:  # the workers got the same Ctrl-C: they fail their trials and exit
        for process in processes:
            process.wait()
        raise
