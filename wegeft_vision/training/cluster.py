"""Lightning's cluster environment, chosen rather than detected.

Left to itself, Lightning detects SLURM from the environment: on any machine where `srun` exists it warns that `srun`
is not used, and inside a SLURM job it installs its own requeue-on-signal handler, which would fight the protocol's
(`protocol.preemption`). A run launched as several SLURM tasks (`srun`, one process per device) gets SLURM's
environment without Lightning's requeue; any other run, one process that launches its DDP processes itself (the
protocol's SLURM jobs included), gets Lightning's own.

`destroy_process_group_at_exit`: every process of a distributed run destroys its process group while the interpreter
is still whole (Lightning does so for NCCL only), and lets the group's threads finish with Python objects first.
"""

from __future__ import annotations

import atexit
import functools
import os
import time
import warnings

import torch.distributed as dist
from lightning.fabric.plugins.environments import ClusterEnvironment, LightningEnvironment, SLURMEnvironment

# Lightning still asks SLURM whether to resume an "hpc" checkpoint whenever no ckpt_path is given, and that question
# warns about `srun` on every machine that has it; with the environment chosen here, the warning is moot.
SRUN_WARNING = "The `srun` command is available on your system but is not used"
warnings.filterwarnings("ignore", message=SRUN_WARNING)  # at import: a catch_warnings block would forget it


def cluster_environment() -> ClusterEnvironment:
    """SLURM's environment (no auto-requeue) for a step of several SLURM tasks, else Lightning's own."""
    tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    interactive = os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")
    if tasks > 1 and not interactive:
        return SLURMEnvironment(auto_requeue=False)
    return LightningEnvironment()


# Long enough for a gloo worker thread to be scheduled and drop what it holds; short beside any run.
WORKER_GRACE_S = 0.2


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(WORKER_GRACE_S)  # the GIL released: see `destroy_process_group_at_exit`


@functools.cache
def destroy_process_group_at_exit() -> None:
    """Destroy this process's process group when the interpreter exits, before it is taken apart, then give the
    backend's worker threads a moment with the GIL free. A gradient all-reduce that DDP issues during backward holds a
    Python object (the context PyTorch keeps in the thread-local state for the backward), and a gloo worker thread
    drops the last reference to it, taking the GIL, just after the collective completes; if the interpreter has begun
    finalizing by then, the thread cannot take the GIL and the process aborts (`terminate called without an active
    exception`), failing a run that had finished. Called once the group exists; registered once per process."""
    atexit.register(_destroy_process_group)
