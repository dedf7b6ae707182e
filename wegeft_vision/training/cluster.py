"""Lightning's cluster environment, chosen rather than detected.

Left to itself, Lightning detects SLURM from the environment: on any machine where `srun` exists it warns that `srun`
is not used, and inside a SLURM job it installs its own requeue-on-signal handler, which would fight the protocol's
(`protocol.preemption`). A run launched as several SLURM tasks (`srun`, one process per device) gets SLURM's
environment without Lightning's requeue; any other run, one process that launches its DDP processes itself (the
protocol's SLURM jobs included), gets Lightning's own.
"""

from __future__ import annotations

import os
import warnings

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
