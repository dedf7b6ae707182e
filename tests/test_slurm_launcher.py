"""`protocol --launcher slurm` on a throwaway single-node SLURM cluster (`slurm_cluster.py`): two worker jobs give the
local run's results, a job requeued in the middle of the final run resumes it from its checkpoint, a cancelled job
leaves the grid to the other and a rerun attaches; every point trained once, the queue empty afterwards."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import Cluster, ClusterUnavailable, release, start_cluster, stop_cluster

from wegeft_vision.cli import main
from wegeft_vision.protocol.results import row_key
from wegeft_vision.protocol.search import open_storage

pytest.importorskip("submitit")

ONE_UNIT = ["--config", "smoke", "--no-progress", "--tasks", "vtab-1k/synthetic_shape", "--methods", "linear"]
LONG_FINAL = ["--set", "model.epochs=30", "--set", "trainer.max_epochs=30"]  # time to requeue mid-final
SLURM = ["--launcher", "slurm", "--workers", "2", "--poll", "0.5", "--slurm", "cpus_per_task=1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    try:
        running = start_cluster(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as error:
        pytest.skip(f"no throwaway SLURM cluster here: {error}")
    yield running
    stop_cluster(running)


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> list[dict[str, str]]:
    out = tmp_path_factory.mktemp("local")
    assert main(["protocol", *ONE_UNIT, *LONG_FINAL, "--out", str(out)]) == 0
    return rows_of(out)


def rows_of(out: Path) -> list[dict[str, str]]:
    if not (out / "results.csv").is_file():
        return []
    with (out / "results.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def results(rows: list[dict[str, str]]) -> dict[str, tuple[str, str, str]]:
    return {r["stage"] + r["lr"] + r["weight_decay"]: (r["lr"], r["weight_decay"], r["top1"]) for r in rows}


def launcher(cluster: Cluster, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "wegeft_vision.cli", "protocol", *ONE_UNIT, *LONG_FINAL, *SLURM, "--out", str(out)]
    return subprocess.Popen(
        [*command, *extra], env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def jobs_of(out: Path) -> list[str]:
    return json.loads((out / "slurm" / "jobs.json").read_text())["jobs"]


def wait_for(ready, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def final_checkpoint(out: Path) -> Path | None:
    found = list((out / "runs").glob("*/*/*/seed*/final/*/checkpoints/last.ckpt"))
    return found[0] if found else None


def job_training_the_final(out: Path) -> str:
    """The job whose log says it started the final run."""
    for job in jobs_of(out):
        for log in (out / "slurm" / job).glob("*_log.out"):
            if "/final/" in log.read_text(errors="replace"):
                return job
    raise AssertionError(f"no job log under {out / 'slurm'} names the final run")


def assert_trained_once(out: Path, expected: list[dict[str, str]]) -> None:
    rows = rows_of(out)
    assert len(rows) == len(expected) == len({row_key(r) for r in rows}), rows
    assert results(rows) == results(expected)
    for row in rows:  # each run wrote its result once: one log of one attempt, or its resumed attempts
        assert (out / row["run_dir"] / "result.json").is_file()


def test_two_jobs_give_the_local_results_and_leave_the_queue_empty(cluster, local, tmp_path):
    out = tmp_path / "slurm_run"
    code, output = finish(launcher(cluster, out))
    assert code == 0, output
    assert "submitted 2 job(s)" in output and "[search 4/4 · final 1/1]" in output
    assert_trained_once(out, local)
    assert cluster.queue() == []
    assert (out / "optuna.journal").is_file()  # the default storage of SLURM jobs: a journal file in OUT
    again = launcher(cluster, out)
    code, output = finish(again)
    assert code == 0 and "nothing to submit" in output  # a rerun of a finished folder submits nothing


@pytest.mark.parametrize(
    "how, signal_name",
    [
        (["scontrol", "requeue"], "SIGTERM"),  # preemption with requeue: SLURM stops the job and requeues it
        (["scancel", "--signal=USR2"], "SIGUSR2"),  # the warning before the time limit: the job requeues itself
    ],
)
def test_a_job_requeued_mid_final_resumes_it_and_nothing_trains_twice(cluster, local, tmp_path, how, signal_name):
    out = tmp_path / "requeued"
    code, output = finish(launcher(cluster, out, "--detach"))
    assert code == 0 and "detached" in output, output
    wait_for(lambda: final_checkpoint(out) is not None)
    searches = {r["run_dir"]: os.stat(out / r["run_dir"] / "result.json").st_mtime_ns for r in rows_of(out)}
    job = job_training_the_final(out)
    assert cluster.run(*how, job).returncode == 0
    wait_for(lambda: cluster.run("squeue", "-h", "-j", job, "-o", "%T").stdout.strip() == "PENDING")
    release(cluster, job)  # SLURM would hold a requeued job for about two minutes
    code, output = finish(launcher(cluster, out))  # the same command attaches and waits
    assert code == 0, output
    assert "attached to" in output or "nothing to submit" in output  # the requeued job may be done already
    assert_trained_once(out, local)
    for run_dir, mtime in searches.items():  # finished runs untouched
        assert os.stat(out / run_dir / "result.json").st_mtime_ns == mtime
    final = next(r for r in rows_of(out) if r["stage"] == "final")
    assert json.loads((out / final["run_dir"] / "result.json").read_text())["resumed_at_epoch"] >= 1
    assert cluster.queue() == []
    storage = open_storage(f"journal:{out / 'optuna.journal'}", out)
    trials = [t for study in storage.get_all_studies() for t in storage.get_all_trials(study._study_id)]
    assert [t.user_attrs["preempted"] for t in trials if "preempted" in t.user_attrs] == [signal_name]


def test_a_cancelled_job_leaves_the_grid_to_the_other_and_a_rerun_completes(cluster, local, tmp_path):
    out = tmp_path / "cancelled"
    code, output = finish(launcher(cluster, out, "--detach"))
    assert code == 0, output
    first, second = jobs_of(out)
    wait_for(lambda: len(rows_of(out)) >= 1)
    assert cluster.run("scancel", first).returncode == 0
    cluster.wait_empty(timeout=300)  # the other job finishes the grid and the final
    code, output = finish(launcher(cluster, out))  # nothing missing: nothing submitted, exit 0
    assert code == 0, output
    assert_trained_once(out, local)
    assert cluster.queue() == []


def test_sbatch_options_come_from_defaults_the_preset_and_the_command_line():
    from wegeft_vision.protocol.slurm import sbatch_options

    options = sbatch_options(
        {"partition": "cpu", "time": 60},
        {"partition": "gpu", "gpus-per-node": 1, "mail-type": "END", "reservation": "course"},
    )
    assert options["partition"] == "gpu" and options["time"] == 60 and options["gpus_per_node"] == 1
    assert options["mail_type"] == "END" and options["ntasks_per_node"] == 1 and options["signal_delay_s"] == 120
    assert options["additional_parameters"] == {"reservation": "course"}
    with pytest.raises(ValueError, match="--slurm folder: set by the launcher"):
        sbatch_options({}, {"folder": "/tmp"})


def test_slurm_options_without_the_slurm_launcher_are_refused(tmp_path, capsys):
    assert main(["protocol", *ONE_UNIT, "--out", str(tmp_path), "--detach"]) == 2
    assert "--slurm and --detach need --launcher slurm" in capsys.readouterr().err
    assert main(["protocol", *ONE_UNIT, "--out", str(tmp_path), "--launcher", "slurm", "--gpus", "0"]) == 2
    assert "--slurm gpus_per_node=N" in capsys.readouterr().err


def test_a_rerun_resubmits_what_is_missing_after_every_job_was_cancelled(cluster, local, tmp_path):
    out = tmp_path / "all_cancelled"
    code, output = finish(launcher(cluster, out, "--detach", "--slurm", "hold=true"))  # queued held: none may start
    assert code == 0, output
    assert cluster.run("scancel", *jobs_of(out)).returncode == 0
    cluster.wait_empty(timeout=120)
    code, output = finish(launcher(cluster, out))
    assert code == 0, output
    assert "submitted 2 job(s)" in output and len(jobs_of(out)) == 4
    assert_trained_once(out, local)
    assert cluster.queue() == []
