"""A real PostgreSQL for the tests: Debian's server binaries (`.ci/run` installs the `postgresql` package), a
fresh cluster in a temporary directory on a free loopback port, stopped and removed afterwards. PostgreSQL refuses
to run as root, so as root the cluster belongs to the `postgres` user the package creates."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def postgres_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_postgres() -> Iterator[str]:
    """The URL of a running, empty PostgreSQL (database `postgres`, user `postgres`, no password on loopback)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL's server binaries are missing: apt-get install -y postgresql")
    as_owner: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="llm-server-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        as_owner = ["runuser", "-u", "postgres", "--"]
        shutil.chown(workdir, "postgres")
    data = workdir / "data"
    port = _free_port()
    run = lambda *args: subprocess.run([*as_owner, *args], check=True, capture_output=True, text=True)  # noqa: E731
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(workdir / "postgres.log"), "-o",
            f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if data.exists():
            subprocess.run([*as_owner, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)
