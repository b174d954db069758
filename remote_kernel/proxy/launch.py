"""The kernel's launcher: fork the proxy kernel from a warm process instead of starting it cold.

``python -m remote_kernel -f {connection_file}`` spends about 0.3 s importing ipykernel, zmq,
aiohttp and our modules before it can answer ``kernel_info``; a local ``python3`` kernel spends
about as long, so a proxy started cold is never faster than a local kernel. So the process
jupyter_client starts is a launcher (this module, standard library only): it asks a *fork
server* (:mod:`remote_kernel.proxy.forkserver`) that has those modules loaded already to fork a
kernel for it, hands over its standard streams, arguments, environment and working directory,
and then stands in for that kernel: it forwards the signals it gets and exits with the kernel's
status, so jupyter_client's ``is_alive``, ``kill`` and restarts work as with any kernel.

The fork server is per user and per installation: its socket lives in a private directory and
is named after the interpreter, ``sys.path``, the ``PYTHON*`` variables and the installed
sources (a changed install gets a new server). When there is none, the launcher starts the
kernel in its own process as before and starts one for next time; it exits after
``REMOTE_KERNEL_FORKSERVER_IDLE`` seconds (default 1800) with no kernel.
``REMOTE_KERNEL_FORKSERVER=0`` turns all of this off.

Wire format (a Unix socket, same user only): the launcher sends a 4-byte big-endian length and
a JSON request ``{argv, env, cwd, path0, fds}`` with its standard stream descriptors attached
(``SCM_RIGHTS``); the server answers JSON lines: ``{"pid": n}`` once the kernel is forked (or
``{"error": text}``), then ``{"exit": code}`` when it ends (a negative code: killed by that
signal). The forked kernel watches the launcher's end of the connection and kills itself when
the launcher is gone (killed with SIGKILL, which cannot be forwarded).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys
from pathlib import Path

# no typing import: it costs the launcher ~8 ms of its ~20 (annotations are strings here)

SWITCH_ENV = "REMOTE_KERNEL_FORKSERVER"
DIR_ENV = "REMOTE_KERNEL_FORKSERVER_DIR"
IDLE_ENV = "REMOTE_KERNEL_FORKSERVER_IDLE"
DEFAULT_IDLE = 1800.0
#: Seconds a fork server started beside an in-process kernel waits before it loads its modules:
#: loading them at once takes CPU that kernel's start needs (0.44 -> 0.58 s on 2 cores, even
#: at nice 19: the cores are often hyperthreads of one).
WARM_AFTER = 2.0
#: Seconds to wait for a fork server to answer before starting the kernel in-process.
CONNECT_TIMEOUT = 2.0
#: Signals the launcher passes on to its kernel.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2)  # fmt: skip
HEADER = struct.Struct("!I")
MAX_REQUEST = 16 * 1024 * 1024
PACKAGE = Path(__file__).resolve().parent.parent  # remote_kernel/
#: Entries of a ``sys.path`` directory that name installed distributions and their versions.
INSTALLED = (".dist-info", ".egg-info", ".egg-link", ".pth")


class Unavailable(Exception):
    """No fork server answered (or it could not fork): start the kernel in-process."""


def enabled(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    value = env.get(SWITCH_ENV, "1").strip().lower()
    # Linux only: forking a process that loaded system frameworks is unsafe on macOS
    return value not in ("0", "false", "no", "off") and sys.platform.startswith("linux")


def private_dir() -> Path:
    """The directory of this user's fork-server sockets (made 0700; refused if not private)."""
    configured = os.environ.get(DIR_ENV)
    if configured:
        base = Path(configured)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "remote-kernel"
    else:
        base = Path("/tmp") / f"remote-kernel-{os.getuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = base.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise Unavailable(f"{base} is not private to this user")
    return base


def fingerprint() -> str:
    """What the warm modules depend on: the interpreter, its path and flags, our sources, and
    the distributions installed on the path (an upgrade renames their ``dist-info``)."""
    parts: list[object] = [sys.executable, sys.version, sys.path[1:], repr(sys.flags)]
    parts.append(sorted((k, v) for k, v in os.environ.items() if k.startswith("PYTHON")))
    for entry in sys.path[1:]:  # what is installed there, with versions (not mtimes: tests,
        try:  # caches and editors touch the directories on the path all the time)
            parts.append(sorted(n for n in os.listdir(entry or ".") if n.endswith(INSTALLED)))
        except OSError:
            parts.append(None)
    for dirpath, dirnames, filenames in os.walk(PACKAGE):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                st = os.stat(os.path.join(dirpath, name))
                parts.append((name, st.st_size, st.st_mtime_ns))
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]


def socket_path() -> Path:
    return private_dir() / f"fs-{fingerprint()}.sock"


# -- the launcher ------------------------------------------------------------------------------
def run(argv: list[str]) -> int:
    """Run the kernel ``argv`` describes in a forked process; its exit code.

    Raises :class:`Unavailable` (before anything was started) when no fork server answers."""
    try:
        path = socket_path()
    except OSError as exc:  # no private directory could be made
        raise Unavailable(str(exc)) from None
    sock = _connect(path)
    try:
        pid = _request(sock, argv)
    except BaseException:
        sock.close()
        raise
    return _stand_in(sock, pid)


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise Unavailable(f"no fork server at {path}: {exc}") from None
    return sock


def _request(sock: socket.socket, argv: list[str]) -> int:
    fds = [fd for fd in (0, 1, 2) if _is_open(fd)]
    body = json.dumps(
        {
            "argv": argv,
            "env": dict(os.environ),
            "cwd": os.getcwd(),
            "path0": sys.path[0] if sys.path else "",
            "fds": fds,
            "launcher": os.getpid(),
        }
    ).encode()
    try:
        socket.send_fds(sock, [HEADER.pack(len(body))], fds)
        sock.sendall(body)
        answer = _read_line(sock)
    except (OSError, ValueError) as exc:
        raise Unavailable(f"the fork server did not answer: {exc}") from None
    if "pid" not in answer:
        raise Unavailable(f"the fork server could not start the kernel: {answer.get('error')}")
    return int(answer["pid"])


def _stand_in(sock: socket.socket, pid: int) -> int:
    """Forward signals to the kernel until it ends; its exit code."""

    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(pid, signum)
        except OSError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    sock.settimeout(None)
    try:
        answer = _read_line(sock)
    except (OSError, ValueError):
        answer = {}
    if "exit" not in answer:  # the fork server died: so does the kernel (its parent poller)
        forward(signal.SIGTERM, None)
        return 1
    code = int(answer["exit"])
    if code < 0:  # killed by a signal: so are we (as jupyter_client would have seen)
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


def _read_line(sock: socket.socket) -> dict:  # type: ignore[type-arg]
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionResetError("the fork server closed the connection")
        data += chunk
    answer = json.loads(data)
    return answer if isinstance(answer, dict) else {}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def spawn_server(warm_after: float = WARM_AFTER) -> None:
    """Start a fork server for next time, detached (its own session, no inherited streams).

    It takes its lock at once (so no other is started) and loads its modules after
    ``warm_after`` seconds; until it listens, kernels start in-process."""
    import subprocess

    try:
        path = socket_path()
        if _held(lock_path(path)):
            return  # one is starting (or running and busy)
        module, delay = "remote_kernel.proxy.forkserver", f"{warm_after:g}"
        with open(log_path(path), "ab") as log:
            subprocess.Popen(
                [sys.executable, "-m", module, str(path), "--warm-after", delay],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd="/",
                start_new_session=True,
                close_fds=True,
            )
    except (OSError, Unavailable):
        pass


def lock_path(path: Path) -> Path:
    """Held (``flock``) by the fork server of ``path`` from its start to its end."""
    return path.with_suffix(".lock")


def log_path(path: Path) -> Path:
    return path.with_suffix(".log")


def _held(lock: Path) -> bool:
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
