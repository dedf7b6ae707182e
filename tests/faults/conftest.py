"""Fixtures of the fault tests: a throwaway PostgreSQL server on a Unix socket (one per session, a database per test).

The server is Debian's `postgresql` package (`.ci/run` installs it when missing): `initdb` and `pg_ctl` from PATH or
`/usr/lib/postgresql/*/bin`, run as an unprivileged user when the tests run as root (PostgreSQL refuses root), with
trust authentication on a socket in a fresh temporary folder and no TCP port. `WEGEFT_TEST_POSTGRES_URL` points the
tests at a server of one's own instead (`postgresql+psycopg://USER@/DB?host=SOCKETDIR`; each test creates a database
in it). Where no server can start, the tests that need one skip and say why. `study_storage_url` runs a test on each
kind of study storage in turn: SQLite, the journal file, PostgreSQL.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

URL_VARIABLE = "WEGEFT_TEST_POSTGRES_URL"
ROLE = "wegeft"  # the server's superuser, reached without a password over the socket


def _version(folder: str) -> list[int]:
    return [int(n) for n in Path(folder).parent.name.split(".") if n.isdigit()]


def _server_binaries() -> tuple[str, str] | None:
    """`initdb` and `pg_ctl` of one installation: PATH first, then the newest Debian `/usr/lib/postgresql/*/bin`."""
    folders = [str(Path(p).parent) for p in (shutil.which("initdb"),) if p]
    folders += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    for folder in folders:
        initdb, pg_ctl = Path(folder) / "initdb", Path(folder) / "pg_ctl"
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return str(initdb), str(pg_ctl)
    return None


def _unprivileged_user() -> str | None:
    """The user the server runs as when the tests run as root: `postgres` (Debian's package creates it), else
    `nobody`; None when not root (the server runs as the current user)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.skip("PostgreSQL refuses to run as root and there is no `postgres` or `nobody` user to run it as")


def _as_user(user: str | None, command: list[str]) -> list[str]:
    if user is None:
        return command
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *command]
    return ["su", "-s", "/bin/sh", user, "-c", subprocess.list2cmdline(command)]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a running PostgreSQL server's `postgres` database; skips where none can start."""
    if os.environ.get(URL_VARIABLE):
        yield os.environ[URL_VARIABLE]
        return
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is missing: pip install -e '.[dev]'")
    binaries = _server_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server (initdb, pg_ctl): install Debian's postgresql package (.ci/run does)")
    initdb, pg_ctl = binaries
    user = _unprivileged_user()
    # a short path (a socket's path has a limit) that the server's user can reach
    base = Path(tempfile.mkdtemp(prefix="wegeft-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
    data, log = base / "data", base / "server.log"
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    options = f"-c listen_addresses='' -c unix_socket_directories={base} -c fsync=off -c max_connections=100"
    start = [pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start"]
    try:
        for command in ([initdb, "-D", str(data), "-U", ROLE, "-A", "trust", "-E", "UTF8", "--no-sync"], start):
            done = subprocess.run(_as_user(user, command), capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                if log.is_file():
                    detail += log.read_text(errors="replace").strip().splitlines()[-3:]
                shutil.rmtree(base, ignore_errors=True)
                pytest.skip(f"PostgreSQL did not start ({Path(command[0]).name}): {' / '.join(detail)}")
    except (OSError, subprocess.TimeoutExpired) as error:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {error}")
    try:
        yield f"postgresql+psycopg://{ROLE}@/postgres?host={base}"
    finally:
        stop = [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]
        subprocess.run(_as_user(user, stop), capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


_databases = itertools.count()


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """The URL of a new, empty database on the session's server (studies of one test never meet another's)."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(postgres_server)
    name = f"wegeft_{os.getpid()}_{next(_databases)}"
    connection = {
        "dbname": admin.database,
        "user": admin.username,
        "password": admin.password,
        "host": admin.query.get("host") or admin.host,
        "port": admin.port,
    }
    with psycopg.connect(**{k: v for k, v in connection.items() if v}, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    return admin.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "journal", "postgresql"])
def study_storage_url(request, tmp_path) -> str | None:
    """The `--storage` of each kind of study storage: None (SQLite in OUT), a journal file, a PostgreSQL database."""
    if request.param == "sqlite":
        return None
    if request.param == "journal":
        (tmp_path / "shared").mkdir()
        return f"journal:{tmp_path / 'shared' / 'studies.log'}"
    return request.getfixturevalue("postgres_url")
