"""A throwaway single-node SLURM cluster for tests that submit real batch jobs.

`start_cluster(folder)` starts a private `munged` (its own key and socket), `slurmctld` and `slurmd` (all as root,
in the foreground, every file they write inside `folder`) and waits until the node is idle; `stop_cluster` cancels the
jobs and stops all three. The system's munge (/etc/munge, /run/munge) and slurm configuration are never used.

Clients (`sbatch`, `squeue`, `scontrol`, ...) find this cluster through `SLURM_CONF`: run them with `Cluster.env`
(or `Cluster.run`). Jobs inherit the submitting environment (sbatch's default `--export=ALL`), so a job started
with `Cluster.env` sees the same PATH and virtual environment as the test. Where no cluster can start (binaries
missing, not root, a daemon dies, the node never gets idle) `ClusterUnavailable` says why, so a test can skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
START_TIMEOUT = 60.0
STOP_GRACE = 5.0


class ClusterUnavailable(Exception):
    """No cluster could start here; the message says why (with the tail of the relevant log)."""


@dataclass
class Cluster:
    """A running (or partly started) cluster: its folder, slurm.conf, client environment and daemons."""

    folder: Path
    conf: Path
    env: dict[str, str]
    munge_socket: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *argv: str, timeout: float = 30.0, **kw) -> subprocess.CompletedProcess:
        """Run a SLURM client command (`squeue`, `sbatch`, ...) against this cluster; never raises on failure."""
        return subprocess.run(argv, env=self.env, text=True, capture_output=True, check=False, timeout=timeout, **kw)

    def queue(self) -> list[str]:
        """The ids of the jobs still in the queue (pending, running, completing, ...)."""
        done = self.run("squeue", "-h", "-o", "%i")
        if done.returncode != 0:
            raise RuntimeError(f"squeue failed: {done.stderr.strip()}")
        return done.stdout.split()

    def wait_empty(self, timeout: float = 30.0) -> None:
        """Wait until no job is left in the queue; `TimeoutError` (naming the jobs) when some still are."""
        deadline = time.monotonic() + timeout
        while (jobs := self.queue()) and time.monotonic() < deadline:
            time.sleep(0.5)
        if jobs:
            raise TimeoutError(f"jobs still queued after {timeout:.0f} s: {jobs}")


def release(cluster: Cluster, job_id: str) -> subprocess.CompletedProcess:
    """Let a held-back job start now (`scontrol update JobId=<id> StartTime=now`).

    SLURM delays a requeued job's restart (its begin time is set about two minutes ahead); this releases it at once,
    but not within the second its old credential was revoked: slurmd compares whole seconds, refuses a credential
    made in that second ("Job credential revoked") and the job ends instead of restarting. Call it once the requeued
    job is PENDING.
    """
    time.sleep(2.0)
    return cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")


def start_cluster(folder: Path) -> Cluster:
    """Start munged, slurmctld and slurmd with everything in `folder`; `ClusterUnavailable` where they cannot."""
    binaries = _binaries()
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    munge_socket = folder / "munge.socket"
    # slurmd makes a unix socket <SlurmdSpoolDir>/<node>_<job>.<step> per job step; such paths hold 107 bytes at most
    if len(str(folder / "slurmd" / f"{_host()}_4294967294.4294967294")) > 107:
        raise ClusterUnavailable(f"folder path too long for the daemons' unix sockets: {folder}")
    conf = _write_conf(folder, munge_socket)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for name in [n for n in env if n.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "SINFO_")) and n != "SLURM_CONF"]:
        del env[name]  # a surrounding SLURM job's settings would leak into our clients
    cluster = Cluster(folder=folder, conf=conf, env=env, munge_socket=munge_socket)
    try:
        _start_munged(cluster, binaries["munged"])
        _start_daemon(cluster, "slurmctld", [binaries["slurmctld"], "-D", "-c", "-f", str(conf)])
        _wait(cluster, "slurmctld", lambda: cluster.run("scontrol", "ping").returncode == 0)
        _start_daemon(cluster, "slurmd", [binaries["slurmd"], "-D", "-f", str(conf)])
        _wait(cluster, "slurmd", lambda: _node_state(cluster) == "idle")
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    """Cancel every job, then stop slurmd, slurmctld and munged; safe after a partial start, and twice."""
    slurmctld = cluster.processes.get("slurmctld")
    if slurmctld is not None and slurmctld.poll() is None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            cluster.run("scancel", "--full", "--user", "root", timeout=10)
            _poll(lambda: not cluster.queue(), timeout=10, alive=lambda: slurmctld.poll() is None)
    for name in ("slurmd", "slurmctld", "munged"):
        if name in cluster.processes:
            _terminate(cluster.processes.pop(name))
    _kill_leftovers(cluster.conf)


@contextlib.contextmanager
def slurm_cluster(folder: Path) -> Iterator[Cluster]:
    """A cluster for the length of a `with` block."""
    cluster = start_cluster(folder)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


def _binaries() -> dict[str, str]:
    """The daemons' and clients' paths; `ClusterUnavailable` when one is missing or we are not root."""
    if os.geteuid() != 0:
        raise ClusterUnavailable("the test SLURM cluster runs its daemons as root; not root here")
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    found = {name: shutil.which(name, path=path) for name in DAEMONS + CLIENTS}
    missing = sorted(name for name, where in found.items() if where is None)
    if missing:
        raise ClusterUnavailable(f"SLURM/munge not installed (missing {', '.join(missing)}): slurm-wlm and munge")
    return {name: str(where) for name, where in found.items()}


def _host() -> str:
    """This machine's short host name (the node's name: slurmd registers under it)."""
    return socket.gethostname().split(".")[0]


def _free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports nobody listens on right now."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for probe in probes:  # all bound at once, so the ports differ
            probe.bind(("", 0))
        return [probe.getsockname()[1] for probe in probes]


def _real_memory_mb() -> int:
    """About half the machine's memory in MB (what the node offers its jobs)."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return max(int(line.split()[1]) // 1024 // 2, 256)
    return 1024


def _write_conf(folder: Path, munge_socket: Path) -> Path:
    """Write slurm.conf (and an empty plugstack.conf) into `folder`; returns slurm.conf's path."""
    host = _host()
    cpus = max(os.cpu_count() or 1, 2)
    for name in ("state", "slurmd"):
        (folder / name).mkdir(exist_ok=True)
    auth = f"socket={munge_socket}"
    ctld_port, slurmd_port = _free_ports(2)
    settings = {
        "ClusterName": "testcluster",
        "SlurmctldHost": f"{host}(127.0.0.1)",  # no reliance on the host name resolving
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "SlurmctldPort": ctld_port,
        "SlurmdPort": slurmd_port,
        "AuthType": "auth/munge",
        "AuthInfo": auth,
        "CredType": "cred/munge",
        "StateSaveLocation": folder / "state",
        "SlurmdSpoolDir": folder / "slurmd",
        "SlurmctldPidFile": folder / "slurmctld.pid",
        "SlurmdPidFile": folder / "slurmd.pid",
        "SlurmctldLogFile": folder / "slurmctld.log",
        "SlurmdLogFile": folder / "slurmd.log",
        "PlugStackConfig": folder / "plugstack.conf",  # not the system's /etc/slurm/plugstack.conf
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_CPU",  # with CR_CPU_Memory a job without --mem would take all the node's memory
        "MpiDefault": "none",
        "MailProg": "/bin/true",
        "AccountingStorageType": "accounting_storage/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "JobCompType": "jobcomp/none",
        "JobRequeue": 1,
        "ReturnToService": 2,
        "KillWait": 5,
        "MinJobAge": 30,
        "SchedulerParameters": "sched_interval=1,batch_sched_delay=0,sched_min_interval=0",
        "SlurmctldDebug": "info",
        "SlurmdDebug": "info",
    }
    lines = [f"{key}={value}" for key, value in settings.items()]
    lines += [
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_real_memory_mb()} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
    ]
    (folder / "plugstack.conf").write_text("")
    conf = folder / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _start_munged(cluster: Cluster, munged: str) -> None:
    """Start munged with its own key, socket, pid, log and seed files in the cluster's folder."""
    key = cluster.folder / "munge.key"
    cluster.munge_socket.unlink(missing_ok=True)  # a stale one from an earlier run would look ready
    if not key.exists():
        key.write_bytes(os.urandom(1024))
    os.chown(key, 0, 0)
    key.chmod(0o400)
    argv = [munged, "--foreground", "--force", f"--key-file={key}", f"--socket={cluster.munge_socket}"]
    argv += [f"--pid-file={cluster.folder / 'munged.pid'}", f"--log-file={cluster.folder / 'munged.log'}"]
    argv += [f"--seed-file={cluster.folder / 'munged.seed'}"]
    _start_daemon(cluster, "munged", argv)
    _wait(cluster, "munged", cluster.munge_socket.exists)


def _start_daemon(cluster: Cluster, name: str, argv: list[str]) -> None:
    """Start one daemon in the foreground, its stdout and stderr in `<name>.out`."""
    with open(cluster.folder / f"{name}.out", "ab") as out:
        streams = {"stdin": subprocess.DEVNULL, "stdout": out, "stderr": subprocess.STDOUT}
        cluster.processes[name] = subprocess.Popen(argv, env=cluster.env, start_new_session=True, **streams)


def _wait(cluster: Cluster, name: str, ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
    """Wait until `ready()`; `ClusterUnavailable` (with the log's tail) when `name` exits or time runs out."""
    process = cluster.processes[name]
    if _poll(ready, timeout, alive=lambda: process.poll() is None):
        return
    why = f"exited with status {process.returncode}" if process.poll() is not None else f"not ready in {timeout:.0f} s"
    raise ClusterUnavailable(f"{name} {why}:\n{_log_tail(cluster.folder, name)}")


def _poll(ready: Callable[[], bool], timeout: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Call `ready()` until it is true (True), `alive()` turns false or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        with contextlib.suppress(subprocess.SubprocessError, OSError, RuntimeError):
            if ready():
                return True
        time.sleep(0.2)
    return False


def _node_state(cluster: Cluster) -> str:
    """The node's state as `sinfo` reports it (`idle`, `down`, ...), or '' when sinfo fails."""
    done = cluster.run("sinfo", "-h", "-o", "%T")
    return done.stdout.strip() if done.returncode == 0 else ""


def _log_tail(folder: Path, name: str, lines: int = 20) -> str:
    """The last lines of a daemon's log file and captured output."""
    parts = []
    for path in (folder / f"{name}.log", folder / f"{name}.out"):
        if path.exists() and (text := path.read_text(errors="replace").strip()):
            parts.append(f"--- {path.name}\n" + "\n".join(text.splitlines()[-lines:]))
    return "\n".join(parts) or f"(no output from {name})"


def _terminate(process: subprocess.Popen) -> None:
    """SIGTERM a daemon, SIGKILL it after a grace period, and reap it."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_GRACE)


def _kill_leftovers(conf: Path) -> None:
    """Kill what outlived the daemons: slurmstepd and job processes (those whose environment names our `conf`).

    A job still running when slurmd stops keeps its slurmstepd (reparented to init) and its processes. They, like the
    daemons, carry `SLURM_CONF=<conf>` in their environment; so does any process started with `Cluster.env`, and a
    cluster that is gone has no use for those either.
    """
    marker = f"SLURM_CONF={conf}".encode()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _processes_with(marker)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        if not pids or _poll(lambda: not _processes_with(marker), STOP_GRACE):
            return


def _processes_with(marker: bytes) -> list[int]:
    """The ids of the processes (but this one) whose environment holds the entry `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
    return pids
