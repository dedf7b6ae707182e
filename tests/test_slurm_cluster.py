"""The throwaway SLURM cluster of tests/slurm_cluster.py: jobs run, run side by side, and restart after a requeue."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_cluster import Cluster, ClusterUnavailable, release, start_cluster, stop_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running single-node cluster for this module's tests; skips (with the reason) where none can start."""
    try:
        running = start_cluster(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as error:
        pytest.skip(str(error))
    try:
        yield running
    finally:
        stop_cluster(running)


def submit(cluster: Cluster, folder: Path, command: str, *options: str) -> str:
    """Submit `command` as a 1-CPU batch job working in `folder`; returns the job id."""
    argv = ["sbatch", "--parsable", "--ntasks=1", "--cpus-per-task=1", "--mem=100M", f"--chdir={folder}"]
    argv += [f"--output={folder / 'slurm-%j.out'}", *options, "--wrap", command]
    done = cluster.run(*argv)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def states(cluster: Cluster, *job_ids: str) -> dict[str, str]:
    """The state (RUNNING, PENDING, ...) of each given job still in the queue."""
    done = cluster.run("squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids))
    return dict(line.split() for line in done.stdout.splitlines() if line.strip())


def wait_for(condition, timeout: float = 20.0, what: str = "condition", detail=None) -> None:
    """Poll `condition()` until true; fail the test after `timeout` seconds (with `detail()`, e.g. the job's state)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}" + (f": {detail()}" if detail else ""))
        time.sleep(0.2)


def test_a_job_runs_and_leaves_the_queue(cluster: Cluster, tmp_path: Path) -> None:
    target = tmp_path / "hello.txt"
    submit(cluster, tmp_path, f"echo hello > {target}")
    cluster.wait_empty(30)
    assert target.read_text() == "hello\n"


def test_two_one_cpu_jobs_run_at_once(cluster: Cluster, tmp_path: Path) -> None:
    jobs = [submit(cluster, tmp_path, "sleep 5") for _ in range(2)]
    wait_for(lambda: list(states(cluster, *jobs).values()) == ["RUNNING", "RUNNING"], what="both jobs RUNNING")
    cluster.wait_empty(30)


def test_a_requeued_job_runs_again_once_released(cluster: Cluster, tmp_path: Path) -> None:
    starts = tmp_path / "starts.txt"
    job = submit(cluster, tmp_path, f"echo started >> {starts}; sleep 30", "--requeue")
    wait_for(lambda: states(cluster, job).get(job) == "RUNNING" and starts.exists(), what="the first run")
    done = cluster.run("scontrol", "requeue", job)
    assert done.returncode == 0, done.stderr
    # the requeued job stays COMPLETING until its first run is gone; only then does it wait, PENDING, for its begin time
    wait_for(lambda: states(cluster, job).get(job) == "PENDING", what="the requeued job to be pending")
    assert cluster.run("squeue", "-h", "-o", "%r", "-j", job).stdout.strip() == "BeginTime"  # held back ~2 minutes
    done = release(cluster, job)
    assert done.returncode == 0, done.stderr

    def job_state() -> str:
        shown = cluster.run("scontrol", "show", "job", job)
        logs = [(cluster.folder / f"{name}.log").read_text().splitlines()[-15:] for name in ("slurmctld", "slurmd")]
        return "\n".join([shown.stdout, shown.stderr, *(line for log in logs for line in log)])

    wait_for(lambda: len(starts.read_text().splitlines()) >= 2, timeout=90, what="the second run", detail=job_state)
    assert len(starts.read_text().splitlines()) == 2
    assert cluster.run("scancel", job).returncode == 0
    cluster.wait_empty(30)
