"""A private, throwaway PostgreSQL cluster (initdb on a free port, run as user postgres).

The soak (bench/soak.py) restarts its database mid-run; doing that to the machine's shared server
would disturb everything else on it, so the soak starts its own cluster and restarts that one. The
server binaries come from Debian's postgresql package (`/usr/lib/postgresql/<version>/bin`); root
is needed to run them as user postgres.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def pg_bin_dir() -> Path | None:
    """The newest installed server's binaries, or None when no server is installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def can_run_private_cluster() -> str | None:
    """None when a private cluster can be started here, else why not."""
    if pg_bin_dir() is None:
        return "the PostgreSQL server binaries are not installed (/usr/lib/postgresql/*/bin)"
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return "root is needed to run the PostgreSQL server as user postgres"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrivateCluster:
    """One initdb'd cluster in a temporary directory; `url` reaches its `postgres` database."""

    bin_dir: Path
    root: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @classmethod
    def create(cls, *, settings: dict[str, str] | None = None) -> PrivateCluster:
        """initdb a new cluster (trust auth, UTF8) and start it. `settings`: extra `-c` options."""
        reason = can_run_private_cluster()
        if reason is not None:
            raise RuntimeError(reason)
        bin_dir = pg_bin_dir()
        assert bin_dir is not None
        root = Path(tempfile.mkdtemp(prefix="dfm-pg-"))
        shutil.chown(root, "postgres")
        cluster = cls(bin_dir, root, _free_port())
        cluster._as_postgres(
            str(bin_dir / "initdb"),
            "-D",
            str(cluster.data_dir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        cluster._options = " ".join(f"-c {k}={v}" for k, v in (settings or {}).items())
        cluster.start()
        return cluster

    _options: str = ""

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)

    def _pg_ctl(self, *args: str) -> None:
        self._as_postgres(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 {self._options}"
        self._pg_ctl("-o", options.strip(), "-l", str(self.log_path), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Fast shutdown (sessions are terminated, in-flight transactions rolled back) and start."""
        self.stop("fast")
        self.start()

    def destroy(self) -> None:
        """Stop at once and delete the cluster's files."""
        subprocess.run(
            [
                *("runuser", "-u", "postgres", "--", str(self.bin_dir / "pg_ctl")),
                *("-D", str(self.data_dir), "-m", "immediate", "stop"),
            ],
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)
