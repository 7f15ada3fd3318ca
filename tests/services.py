"""Real services for the team tests, each on 127.0.0.1 at a free port, always stopped at the end:
an `sshd` serving a DVC remote, a PostgreSQL cluster, and an `mlflow server` on top of it.

They need Debian's openssh-server and postgresql (`.ci/setup-services` installs them). When one is
missing a test skips with the package to install, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import getpass
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import VENV_BIN

START_TIMEOUT = 120  # seconds: the MLflow server migrates a fresh database on its first start


def require(program: str, package: str, candidates: list[str]) -> str:
    """The first existing path of `program`, or skip (fail in CI) naming the package to install."""
    found = next((p for p in candidates if p and os.access(p, os.X_OK)), None)
    if found:
        return found
    msg = f"{program} not found: install Debian's {package} (apt-get install {package}, or .ci/setup-services)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    ready: Callable[[], bool],
    what: str,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> None:
    """Poll `ready` until it holds; fail with the service's log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        exited = proc is not None and proc.poll() is not None
        if exited or time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            reason = f"exited with {proc.returncode}" if exited else f"not ready after {timeout} s"
            raise RuntimeError(f"{what} {reason}:\n{tail}")
        time.sleep(0.3)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def background(
    cmd: list[str], log: Path, ready: Callable[[], bool], what: str, env: dict[str, str] | None = None
) -> Iterator[None]:
    """Run `cmd` in its own process group until the block ends, then kill the whole group."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    try:
        wait_until(ready, what, proc, log)
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=15)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


@dataclass
class SSHServer:
    port: int
    user: str
    keyfile: Path  # the client's private key, authorised on the server

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"


@contextmanager
def sshd(tmp: Path) -> Iterator[SSHServer]:
    """An OpenSSH server with throw-away host and client keys, accepting only the client key."""
    binary = require("sshd", "openssh-server", ["/usr/sbin/sshd", shutil.which("sshd")])
    tmp.mkdir(parents=True, exist_ok=True)
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / key)], check=True)
    shutil.copy(tmp / "client_key.pub", tmp / "authorized_keys")
    port = free_port()
    (tmp / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {tmp / "host_key"}
PidFile {tmp / "sshd.pid"}
AuthorizedKeysFile {tmp / "authorized_keys"}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    # -D: stay in the foreground (so we own the process), -e: log to stderr (our log file).
    with background(
        [binary, "-D", "-e", "-f", str(tmp / "sshd_config")], tmp / "sshd.log", lambda: port_open(port), "sshd"
    ):
        yield SSHServer(port, getpass.getuser(), tmp / "client_key")


@contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL cluster with an `mlflow` database; yields its SQLAlchemy URL."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: float(p.split("/")[4]))
    bindir = Path(require("initdb", "postgresql", debian[::-1] + [shutil.which("initdb")])).parent
    # PostgreSQL refuses to run as root: as root, run it as the postgres user, in a folder of its own
    # (outside pytest's tmp, which only root may enter).
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="autocoder-pg-"))
    if as_postgres:
        shutil.chown(base, "postgres")
    data, port = base / "data", free_port()

    def pg(*cmd: str, check: bool = True) -> None:
        proc = subprocess.run(
            [*as_postgres, str(bindir / cmd[0]), *cmd[1:]],
            cwd=base,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")

    try:
        pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        pg(
            "pg_ctl",
            "-D",
            str(data),
            "-l",
            str(base / "log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-k {base} -p {port} -c listen_addresses=127.0.0.1",
            "start",
        )
        pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def mlflow_server(backend_store_uri: str, tmp: Path) -> Iterator[str]:
    """`mlflow server` on the given store, proxying artifacts into tmp/artifacts; yields its URL."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        str(tmp / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # No background job runner (GenAI jobs; seven worker processes): half the start-up time.
    with background(
        cmd,
        tmp / "mlflow-server.log",
        lambda: http_ok(f"{url}/health"),
        "mlflow server",
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    ):
        yield url
