"""The fork server: the proxy kernel's modules loaded once, one forked kernel per launcher.

``python -m remote_kernel.proxy.forkserver SOCKET [--warm-after S]`` (started by
:func:`launch.spawn_server`) takes the lock beside ``SOCKET`` (one server per socket), waits
``S`` seconds (so as not to slow the kernel start beside it), imports what the kernel needs, then
accepts launchers (:mod:`remote_kernel.proxy.launch`, which documents the wire format) on a
0600 Unix socket, from its own user only. For each it forks: the child takes the launcher's
standard streams, arguments, environment and working directory, watches the launcher, and runs
the kernel exactly as ``python -m remote_kernel`` would; the server reports the child's exit
status to the launcher.

The server is single-threaded (it forks) and leaves when it has had no kernel for
``REMOTE_KERNEL_FORKSERVER_IDLE`` seconds, when its socket was removed or replaced, or on
SIGTERM; kernels it forked keep running until they end (it waits for them).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gc
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

from .launch import DEFAULT_IDLE, HEADER, IDLE_ENV, MAX_REQUEST, lock_path

#: Modules every kernel needs before it answers its first cell.
WARM = (
    "remote_kernel.proxy.app",
    "remote_kernel.proxy.iopub_hold",
    "remote_kernel.proxy.kernel",
    "remote_kernel.proxy.early",
    "remote_kernel.proxy.channel",
    "remote_kernel.proxy.cell",
    "remote_kernel.client",
    "remote_kernel.signed_http",
    "aiohttp",
    "aiohttp.payload",
)


def warm() -> None:
    """Import what a kernel needs; then freeze it (the children share those pages)."""
    import importlib

    for name in WARM:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()


class ForkServer:
    def __init__(self, path: Path, idle: float, lock_fd: int) -> None:
        self.path = path
        self.idle = idle
        self.lock_fd = lock_fd
        self.children: dict[int, socket.socket] = {}
        self.stopping = False
        self.listener: socket.socket | None = None
        self._inode = 0
        self._wake_r = self._wake_w = -1

    # -- the loop ----------------------------------------------------------------------------
    def serve(self) -> int:
        listener = self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound and listening under a temporary name, then renamed over a dead server's socket
        # (we hold the lock): a launcher never finds a socket that refuses it.
        fresh = self.path.with_name(self.path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            fresh.unlink()
        listener.bind(str(fresh))
        os.chmod(fresh, 0o600)
        listener.listen(64)
        self._inode = os.stat(fresh).st_ino
        os.replace(fresh, self.path)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        log(f"serving {self.path} (pid {os.getpid()}, idle exit after {self.idle:g} s)")
        last_busy = time.monotonic()
        while True:
            for key, _ in selector.select(timeout=min(self.idle, 5.0)):
                if key.fileobj is listener and not self.stopping:
                    self._accept()
                elif key.fileobj == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
            self._reap()
            now = time.monotonic()
            if self.children:
                last_busy = now
            if not self.stopping and (now - last_busy >= self.idle or not self._still_ours()):
                self._stop_accepting()
            if self.stopping and not self.children:
                break
        log("leaving")
        return 0

    def _stop(self, signum: int, frame: Any) -> None:
        self._stop_accepting()

    def _stop_accepting(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self._still_ours():
            with contextlib.suppress(OSError):
                self.path.unlink()
        if self.listener is not None:
            self.listener.close()

    def _still_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self._inode
        except OSError:
            return False

    # -- one launcher --------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        fds: list[int] = []
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _, uid, _ = struct.unpack("3i", creds)
            if uid != os.getuid():
                raise PermissionError(f"a launcher of uid {uid} is not ours")
            conn.settimeout(5.0)
            request, fds = _read_request(conn)
            conn.settimeout(None)
            if threading.active_count() != 1:  # forking with threads could copy a held lock
                raise RuntimeError("the fork server has threads; it cannot fork safely")
            pid = os.fork()
        except Exception as exc:
            log(f"refused a launcher: {exc}")
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"error": str(exc)}).encode() + b"\n")
            conn.close()
            for fd in fds:
                os.close(fd)
            return
        if pid == 0:
            self._become_kernel(conn, request, fds)
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        log(f"kernel {pid} forked for launcher {request.get('launcher')} in {request.get('cwd')}")
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            log(f"kernel {pid} ended ({code})")
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
            conn.close()

    # -- the child -----------------------------------------------------------------------------
    def _become_kernel(
        self, conn: socket.socket, request: dict[str, Any], fds: list[int]
    ) -> NoReturn:
        code = 1
        try:
            os.setsid()
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if self.listener is not None:
                self.listener.close()
            for fd in (self._wake_r, self._wake_w, self.lock_fd):
                os.close(fd)
            for sock in self.children.values():
                sock.close()
            null = os.open(os.devnull, os.O_RDWR)
            given = dict(zip(request["fds"], fds, strict=False))
            sys.stdout.flush()
            sys.stderr.flush()
            for target in (0, 1, 2):
                os.dup2(given.get(target, null), target)
            for fd in {*fds, null}:
                if fd > 2:
                    os.close(fd)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            sys.argv = list(request["argv"])
            _defaults_from_environment()
            if sys.path:
                sys.path[0] = request["path0"]
            threading.Thread(
                target=_watch_launcher, args=(conn,), name="remote-kernel-launcher", daemon=True
            ).start()
            from ..__main__ import run_kernel

            run_kernel()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                atexit._run_exitfuncs()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)


def _defaults_from_environment() -> None:
    """Trait defaults ipykernel read from the environment when the server imported it: read
    them again from the kernel's (``JPY_PARENT_PID``: whether the kernel has a parent to watch
    and stays quiet about its connection file, as when jupyter_client starts it)."""
    from ipykernel.kernelapp import IPKernelApp

    trait = IPKernelApp.class_traits()["parent_handle"]
    trait.default_value = int(os.environ.get("JPY_PARENT_PID") or 0)


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
    try:
        while len(data) < HEADER.size:
            more = conn.recv(HEADER.size - len(data))
            if not more:
                raise ConnectionResetError("the launcher closed the connection")
            data += more
        (size,) = HEADER.unpack(data)
        if size > MAX_REQUEST:
            raise ValueError(f"a request of {size} bytes")
        body = bytearray()
        while len(body) < size:
            more = conn.recv(min(size - len(body), 65536))
            if not more:
                raise ConnectionResetError("the launcher closed the connection")
            body += more
        request = json.loads(body)
        if not isinstance(request, dict) or not isinstance(request.get("argv"), list):
            raise ValueError("a malformed request")
        if len(request.get("fds", [])) != len(fds):
            raise ValueError("the request's descriptors did not arrive")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return request, fds


def _watch_launcher(conn: socket.socket) -> None:
    """The launcher sends nothing more: end of file means it is gone (killed), and so are we."""
    while True:
        try:
            data = conn.recv(1024)
        except OSError:
            data = b""
        if not data:
            os.kill(os.getpid(), signal.SIGKILL)


def kernel_of(directory: Path, launcher: int) -> int | None:
    """The pid of the kernel forked for ``launcher`` by a fork server logging in ``directory``
    (from the logs: for tests and benchmarks, which see only the launcher's pid)."""
    for path in directory.glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            head, sep, _ = line.partition(" in ")
            if sep and head.endswith(f" forked for launcher {launcher}") and "] kernel " in head:
                return int(head.split("] kernel ", 1)[1].split()[0])
    return None


def servers_in(directory: Path) -> list[int]:
    """The pids of the live fork servers whose sockets are in ``directory`` (from their lock
    files, which a server holds from its start, warm-up included, to its end)."""
    pids = []
    for lock in directory.glob("*.lock"):
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            continue
        if pid and alive(pid):
            pids.append(pid)
    return pids


def stop_servers(directory: Path, grace: float = 10.0) -> None:
    """SIGTERM the fork servers in ``directory`` (they wait for their kernels), then SIGKILL
    what is left after ``grace`` seconds."""
    pids = servers_in(directory)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def log(text: str) -> None:
    print(
        f"[remote-kernel fork server {time.strftime('%H:%M:%S')}] {text}",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    warm_after = 0.0
    if len(args) == 3 and args[1] == "--warm-after":
        with contextlib.suppress(ValueError):
            warm_after = max(0.0, float(args[2]))
    elif len(args) != 1:
        print(
            "usage: python -m remote_kernel.proxy.forkserver SOCKET [--warm-after SECONDS]",
            file=sys.stderr,
        )
        return 2
    path = Path(args[0])
    lock_fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another server has this socket
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, f"{os.getpid()}\n".encode())
    try:
        idle = float(os.environ.get(IDLE_ENV) or DEFAULT_IDLE)
    except ValueError:
        idle = DEFAULT_IDLE
    time.sleep(warm_after)  # the lock is held: launchers start in-process meanwhile
    warm()
    return ForkServer(path, idle, lock_fd).serve()


if __name__ == "__main__":
    sys.exit(main())
