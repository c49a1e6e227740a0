"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temporary folder,
listening on a unix socket only, removed afterwards. Used by the Optuna storage tests of
``graphopt tune`` (tests/test_tune.py). Debian's ``postgresql`` package provides the binaries
(.ci/run installs it when it is missing). Run as root (CI containers), the server runs as the
``postgres`` user through ``runuser``: PostgreSQL refuses to run as root."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from typing import Iterator


def binaries() -> str | None:
    """The folder holding initdb and pg_ctl, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return os.path.dirname(found)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(versions[-1]) if versions else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yields its SQLAlchemy URL (psycopg2, unix socket)."""
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    folder = tempfile.mkdtemp(prefix="gpg")  # short: unix socket paths are limited to ~107
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(folder, "data")

    def run(*argv: str) -> None:
        subprocess.run(prefix + list(argv), check=True, capture_output=True, timeout=120)

    try:
        run(os.path.join(bin_dir, "initdb"), "-D", data, "-A", "trust", "-U", "postgres")
        run(os.path.join(bin_dir, "pg_ctl"), "-D", data, "-w", "-l",
            os.path.join(folder, "log"), "-o", f"-k {folder} -c listen_addresses=''", "start")
        try:
            yield f"postgresql+psycopg2://postgres@/postgres?host={folder}"
        finally:
            run(os.path.join(bin_dir, "pg_ctl"), "-D", data, "-m", "immediate", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
