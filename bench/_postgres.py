"""A throwaway PostgreSQL 15 server for benchmarks and tests: a temporary data folder, a free
127.0.0.1 port, started and stopped by the caller (no network, nothing left behind).

The server refuses to run as root: as root, every server command runs as the `postgres` user
(`runuser`), in a folder that user owns.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"
SEARCH_PATH = ("/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin")


def postgres_binary(name: str) -> str | None:
    """The path of a PostgreSQL program (initdb, pg_ctl, createdb), or None when not installed."""
    for folder in SEARCH_PATH:
        path = Path(folder) / name
        if path.exists():
            return str(path)
    return shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_postgres(database: str = "omni") -> Iterator[str]:
    """Starts a server, creates `database`, yields its URL (`postgresql://postgres@127.0.0.1:PORT/DB`)
    and stops the server and deletes its folder afterwards. RuntimeError when the binaries are
    missing or the server does not start (with the end of its log)."""
    programs = {name: postgres_binary(name) for name in ("initdb", "pg_ctl", "createdb")}
    if not all(programs.values()):
        raise RuntimeError(
            f"PostgreSQL binaries not found: {sorted(k for k, v in programs.items() if not v)}"
        )
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    folder = Path(tempfile.mkdtemp(prefix="omni-pg-"))
    if as_root:
        shutil.chown(folder, "postgres", "postgres")
    folder.chmod(0o700)
    data, log, port = folder / "data", folder / "server.log", _free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:2])} failed: {done.stdout[-1000:]}{done.stderr[-1000:]}{tail}"
            )

    started = False
    try:
        run(
            programs["initdb"],
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = f"-c listen_addresses={HOST} -p {port} -k {folder} -c fsync=off -c max_connections=200"
        run(programs["pg_ctl"], "-D", str(data), "-l", str(log), "-w", "-o", options, "start")
        started = True
        run(programs["createdb"], "-h", HOST, "-p", str(port), "-U", "postgres", database)
        yield f"postgresql://postgres@{HOST}:{port}/{database}"
    finally:
        if started:
            subprocess.run(
                [*prefix, programs["pg_ctl"], "-D", str(data), "-m", "fast", "stop"],
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(folder, ignore_errors=True)
