"""Sessions under bubblewrap: the plan of one session's sandbox, and the command that applies it.

Everything a session runs (its kernel, batch steps, terminals) starts through
:func:`sandbox_command`: a ``bwrap`` invocation that shows the process

- the system read-only (``/usr``, ``/etc``, the merged-usr links, the Python installations the
  session's kernel needs), and nothing else of the host: not the state directory, not other
  sessions, not the server's home;
- the session's work directory read-write at ``/home/work`` (its cwd and ``HOME``, as in a
  Backend.AI container), the key's mounted folders read-write at their own paths (the links in
  the work directory point there), a private ``/tmp`` and ``/dev``, a fresh ``/proc``;
- its own pid, ipc and uts namespaces (optionally its own network namespace: no network);
- when the server runs as root, a host user of the session's key with no capabilities
  (``setpriv`` inside the sandbox, so it owns nothing on the host and cannot gain root).

Limits (cgroups, or rlimits where cgroups are not available) are applied by a tiny ``sh``
prefix that joins the session's cgroups before ``exec``-ing ``bwrap``: see
:mod:`~remote_kernel.server.limits`. This module is pure apart from :func:`find_bwrap`
(which runs one probe sandbox) and :class:`SandboxUsers` (a small JSON file).
"""

from __future__ import annotations

import json
import logging
import os
import select
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("remote_kernel.server")

#: Where the work directory appears inside the sandbox (Backend.AI's convention).
HOME = "/home/work"
#: The session's own IPython directory (history, profile) inside the sandbox: beside the work
#: directory, not in it, so that it is not among the user's files.
IPYTHONDIR = "/home/.ipython"
#: The name the sandboxed process sees for itself (USER, LOGNAME, hostname).
USER = "work"
#: The system paths shown read-only when they exist (links are recreated as links).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
#: Environment variables a sandboxed process gets from the server (nothing else leaks in).
PASSED_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TZ")
#: Where the users of pooled kernels start, above the keys' users (see SandboxUsers).
SPARE_OFFSET = 100_000_000
#: How long bwrap may take to report its child (it sets up mounts first).
INFO_TIMEOUT = 30.0
#: The parent-watching variable jupyter_client sets: inside a pid namespace the kernel's parent
#: is the sandbox's init (pid 1), which ipykernel would take for "my parent died".
UNSET_ENV = ("JPY_PARENT_PID",)


@dataclass(frozen=True)
class SandboxPlan:
    """What one session's processes may see and be; JSON-able (it travels in the kernelspec
    metadata to :class:`~remote_kernel.server.provisioner.SandboxProvisioner`)."""

    bwrap: str
    work_dir: str
    ro_paths: tuple[str, ...] = ()
    rw_paths: tuple[str, ...] = ()
    ipython_dir: str | None = None  # the host directory shown at IPYTHONDIR
    #: host files shown as /etc/passwd and /etc/group (they name the session's user "work")
    passwd: str | None = None
    group: str | None = None
    uid: int | None = None  # run as this host user (server as root); None: the server's user
    gid: int | None = None
    network: bool = True
    hostname: str = "remote-kernel"
    #: ``cgroup.procs`` files the process joins before the sandbox starts.
    cgroup_procs: tuple[str, ...] = ()
    #: prlimit options (``{"as": bytes, "nproc": n}``) where cgroups cannot limit.
    rlimits: Mapping[str, int] = field(default_factory=dict)
    #: The kernel outlives a killed server (session recovery re-adopts it); else it dies with it.
    outlive_server: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rlimits"] = dict(self.rlimits)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SandboxPlan:
        fields = dict(data)
        for key in ("ro_paths", "rw_paths", "cgroup_procs"):
            fields[key] = tuple(fields.get(key) or ())
        fields["rlimits"] = dict(fields.get("rlimits") or {})
        return cls(**fields)


def sandbox_command(
    plan: SandboxPlan,
    cmd: Sequence[str],
    *,
    info_fd: int | None = None,
    new_session: bool = True,
    die_with_parent: bool = False,
) -> list[str]:
    """The argv that runs ``cmd`` under ``plan``.

    ``info_fd``: bwrap writes ``{"child-pid": N}`` there, the host pid of the sandbox's init;
    with ``new_session`` that pid leads the process group of everything inside, which is what
    an interrupt must signal (the outer ``bwrap`` would die of a SIGINT and orphan the rest).
    ``die_with_parent``: the sandbox ends when the process that started it (the server) does,
    also when it is killed.
    """
    if not plan.bwrap:  # no sandbox: only the limits
        return _with_limits(plan, list(cmd))
    args = [plan.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not plan.network:
        args.append("--unshare-net")
    if plan.uid is None and os.geteuid() != 0:
        # Unprivileged bwrap needs a user namespace; inside it the process keeps no capability.
        args += ["--unshare-user", "--cap-drop", "ALL"]
    args += ["--hostname", plan.hostname]
    # The empty places first, so a path shown below may lie inside one (a venv under /tmp).
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "01777", "--tmpfs", "/tmp"]
    args += ["--tmpfs", "/home"]
    # bwrap would copy the modes of the host's parent directories (/root is 0700), and a
    # session's own user could not reach what is shown below them: make them plain 0755.
    for parent in _parents([*plan.ro_paths, *plan.rw_paths], skip=("/tmp", "/home")):
        args += ["--perms", "0755", "--dir", parent]
    for path in plan.ro_paths:
        args += _show(path, writable=False)
    for user_file, shown_as in ((plan.passwd, "/etc/passwd"), (plan.group, "/etc/group")):
        if user_file:
            args += ["--ro-bind", user_file, shown_as]
    args += ["--bind", plan.work_dir, HOME, "--chdir", HOME]
    if plan.ipython_dir:
        args += ["--bind", plan.ipython_dir, IPYTHONDIR]
    for path in plan.rw_paths:
        args += ["--bind", path, path]
    for name in UNSET_ENV:
        args += ["--unsetenv", name]
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    if new_session:
        args.append("--new-session")
    if die_with_parent:
        args.append("--die-with-parent")
    args.append("--")
    if plan.uid is not None:
        gid = plan.gid if plan.gid is not None else plan.uid
        args += [
            "setpriv", f"--reuid={plan.uid}", f"--regid={gid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
        ]  # fmt: skip
    args += list(cmd)
    return _with_limits(plan, args)


def _show(path: str, *, writable: bool) -> list[str]:
    """Show a host path at the same place: a link as the same link, a directory as a bind."""
    if os.path.islink(path) and os.path.dirname(path) == "/":
        return ["--symlink", os.readlink(path), path]
    return ["--bind" if writable else "--ro-bind", path, path]


def _parents(paths: Iterable[str], *, skip: Iterable[str]) -> list[str]:
    """The directories above ``paths`` (outermost first), none of them shown itself."""
    shown = set(paths)
    found: dict[str, None] = {}
    for path in paths:
        parts = Path(path).parts[1:-1]
        for i in range(1, len(parts) + 1):
            parent = "/" + "/".join(parts[:i])
            if parent in shown:
                break
            if parent not in skip:
                found[parent] = None
    return sorted(found, key=lambda p: p.count("/"))


def _with_limits(plan: SandboxPlan, args: list[str]) -> list[str]:
    """Prefix ``args`` with what joins the cgroups and sets the rlimits (nothing if neither)."""
    if plan.rlimits:
        opts = [f"--{name}={value}" for name, value in sorted(plan.rlimits.items())]
        args = ["prlimit", *opts, "--", *args]
    if not plan.cgroup_procs:
        return args
    joins = " && ".join(f"echo $$ > {shlex.quote(f)}" for f in plan.cgroup_procs)
    return ["/bin/sh", "-c", f'{joins} && exec "$0" "$@"', *args]


def sandbox_env(environ: Mapping[str, str], *, path_dirs: Iterable[str]) -> dict[str, str]:
    """A sandboxed process's whole environment: a fixed set, then ``environ`` (the image's
    and ``config.environ``) on top. Nothing else of the server's environment gets in."""
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    env.update(
        {
            "HOME": HOME,
            "USER": USER,
            "LOGNAME": USER,
            "SHELL": "/bin/sh",
            "PATH": os.pathsep.join([*path_dirs, "/usr/local/bin", "/usr/bin", "/bin"]),
            "IPYTHONDIR": IPYTHONDIR,
            "TMPDIR": "/tmp",
        }
    )
    env.update(environ)
    return env


def write_user_files(directory: Path, uid: int, gid: int) -> tuple[str, str]:
    """The host's /etc/passwd and /etc/group with the session's user added as ``work`` (home
    /home/work), so that shells and ``getpass``/``pwd`` know who they are. Returns the paths."""
    files = []
    for name, line in (
        ("passwd", f"{USER}:x:{uid}:{gid}:{USER}:{HOME}:/bin/bash\n"),
        ("group", f"{USER}:x:{gid}:\n"),
    ):
        try:
            text = Path(f"/etc/{name}").read_text(errors="replace")
        except OSError:
            text = ""
        if text and not text.endswith("\n"):
            text += "\n"
        path = directory / name
        path.write_text(text + line)
        files.append(str(path))
    return files[0], files[1]


def python_paths(executable: str) -> list[str]:
    """The directories an interpreter at ``executable`` needs to run: its environment's prefix,
    the real interpreter's prefix (a venv's python is a link), and a venv's base (``home``)."""
    found: list[str] = []

    def add(path: Path) -> None:
        text = str(path)
        if text not in ("/", "") and not any(_within(text, f) for f in found):
            found[:] = [f for f in found if not _within(f, text)]
            found.append(text)

    exe = Path(executable)
    if not exe.is_absolute():
        located = shutil.which(executable)
        if located is None:
            return found
        exe = Path(located)
    for candidate in (exe, exe.resolve()):
        prefix = candidate.parent.parent
        if prefix == Path("/usr") or _within(str(prefix), "/usr"):
            continue
        add(prefix)
        cfg = prefix / "pyvenv.cfg"
        if cfg.is_file():
            for line in cfg.read_text(errors="replace").splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "home" and value.strip():
                    home = Path(value.strip())
                    add(home.parent if home.name == "bin" else home)
    return found


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def system_paths() -> list[str]:
    return [path for path in SYSTEM_PATHS if os.path.lexists(path)]


def find_bwrap(path: str | None = None) -> tuple[str | None, str]:
    """A bwrap that can actually build our sandbox here, or None and why not.

    bwrap may be installed but unusable (no user namespaces for an unprivileged server, a
    container without the right capabilities): a probe runs ``true`` in the sandbox we use.
    """
    bwrap = path or shutil.which("bwrap")
    if bwrap is None:
        return None, "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return None, "setpriv (util-linux) is missing, so a root server cannot drop privileges"
    plan = SandboxPlan(
        bwrap=bwrap,
        work_dir="/tmp" if os.path.isdir("/tmp") else "/",
        ro_paths=tuple(system_paths()),
        uid=65534 if os.geteuid() == 0 else None,
    )
    try:
        result = subprocess.run(
            sandbox_command(plan, ["/bin/true"], die_with_parent=True),
            capture_output=True, timeout=10, text=True, env={"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{bwrap} could not run: {exc}"
    if result.returncode != 0:
        return None, f"{bwrap} cannot create a sandbox here: {result.stderr.strip()[:300]}"
    return bwrap, "ok"


class SandboxUsers:
    """The host user each access key's sandboxed processes run as (a root server only).

    One user per key, allocated from ``base`` upwards and kept in ``<state dir>/sandbox-users.json``
    so a key keeps its user across restarts (its files in mounted folders stay its own).
    These users need no entry in /etc/passwd.
    """

    def __init__(self, path: Path, base: int) -> None:
        self.path = path
        self.base = base
        self._lock = threading.Lock()

    def uid_for(self, owner: str) -> int:
        with self._lock:
            table = self._load()
            uid = table.get(owner)
            if uid is None:
                uid = max([self.base - 1, *table.values()]) + 1
                table[owner] = uid
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(table, indent=1))
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.path)
            return uid

    def spare_uid(self) -> int:
        """A user for a kernel that belongs to no key yet (the warm pool): a fresh one each
        time, far above the keys' users, never written down (it dies with its session)."""
        with self._lock:
            self._spare = getattr(self, "_spare", 0) + 1
            return self.base + SPARE_OFFSET + (os.getpid() % 1000) * 100_000 + self._spare

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"{self.path} is unreadable ({exc}); fix or remove it") from exc
        return {str(k): int(v) for k, v in data.items()}


def read_child_pid(fd: int, alive: Callable[[], bool], timeout: float = INFO_TIMEOUT) -> int:
    """The ``child-pid`` bwrap writes on its ``--info-fd`` (blocking, at most ``timeout``;
    sooner when ``alive()`` turns false: the sandbox failed to start)."""
    data = b""
    deadline = time.monotonic() + timeout
    poller = select.poll()  # not select(): a busy server has descriptors above FD_SETSIZE
    poller.register(fd, select.POLLIN | select.POLLHUP)
    while time.monotonic() < deadline:
        if poller.poll(50):
            chunk = os.read(fd, 4096)
            data += chunk
            try:
                return int(json.loads(data)["child-pid"])
            except (ValueError, KeyError):
                if not chunk:
                    break
        elif not alive():
            break
    raise RuntimeError(
        "The sandbox did not start"
        + (" (bwrap exited)" if not alive() else " in time")
        + "; see the session's kernel log."
    )
