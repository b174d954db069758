"""How the server isolates sessions: the sandbox mode, limits, and each session's share of them.

:class:`Isolation` is decided once at server start (``ServerApp.sandbox``, ``sandbox_network``,
``default_resources``, ``max_resources``) and reported by ``GET /``. For each session it makes a
:class:`SessionIsolation`: the session's resources, its cgroup, its
:class:`~remote_kernel.server.sandbox.SandboxPlan`, and the three things a runner needs from it:
the kernelspec metadata that starts the kernel through
:class:`~remote_kernel.server.provisioner.SandboxProvisioner`, the environment, and
:meth:`SessionIsolation.command` for batch steps and terminals.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .limits import CgroupTree, Resources, SessionCgroup, format_size
from .sandbox import (
    SandboxPlan,
    SandboxUsers,
    find_bwrap,
    python_paths,
    sandbox_command,
    sandbox_env,
    system_paths,
    write_user_files,
)

log = logging.getLogger("remote_kernel.server")

PROVISIONER_NAME = "remote-kernel-sandbox"


@dataclass
class Isolation:
    """The server-wide isolation settings and the machinery they found."""

    mode: str = "none"  # "bubblewrap" | "none"
    bwrap: str | None = None
    network: bool = True
    cgroups: CgroupTree | None = None
    users: SandboxUsers | None = None
    default: Resources = field(default_factory=Resources)
    maximum: Resources = field(default_factory=Resources)
    extra_ro: tuple[str, ...] = ()
    #: Kernels outlive a killed server, which re-adopts them when it starts again.
    outlive_server: bool = False

    @classmethod
    def configure(
        cls,
        sandbox: str,
        *,
        state_dir: Path,
        network: bool = True,
        default: Resources | None = None,
        maximum: Resources | None = None,
        uid_base: int = 1_500_000_000,
        extra_ro: Sequence[str] = (),
        use_cgroups: bool = True,
    ) -> Isolation:
        """``sandbox``: ``bubblewrap``, ``none`` or ``auto`` (bubblewrap when it works here,
        else none with a loud warning). Raises ValueError for an impossible combination."""
        bwrap: str | None = None
        if sandbox in ("auto", "bubblewrap"):
            bwrap, why = find_bwrap()
            if bwrap is None:
                if sandbox == "bubblewrap":
                    raise ValueError(f"sandbox = bubblewrap, but {why}.")
                log.warning(
                    "\n%s\nSESSIONS ARE NOT SANDBOXED: %s.\nEvery session runs as this server's "
                    "user and can read the state directory (all keys' secrets) and other "
                    "sessions' files. Install bubblewrap, or set sandbox = none to silence "
                    "this.\n%s",
                    "!" * 78, why, "!" * 78,
                )  # fmt: skip
        elif sandbox != "none":
            raise ValueError(f"sandbox must be 'bubblewrap', 'none' or 'auto', not {sandbox!r}.")
        if bwrap is None and not network:
            raise ValueError("sandbox_network = False needs sandbox = bubblewrap.")
        cgroups = CgroupTree.detect() if use_cgroups else None
        if cgroups is not None and (swept := cgroups.sweep()):
            log.info("removed %d session cgroups left behind by earlier servers", swept)
        users = None
        if bwrap is not None and os.geteuid() == 0:
            users = SandboxUsers(Path(state_dir) / "sandbox-users.json", uid_base)
        return cls(
            mode="bubblewrap" if bwrap else "none",
            bwrap=bwrap,
            network=network,
            cgroups=cgroups,
            users=users,
            default=default or Resources(),
            maximum=maximum or Resources(),
            extra_ro=tuple(extra_ro),
        )

    @property
    def limits(self) -> str:
        """How limits are enforced: ``cgroup-v1``, ``cgroup-v2`` or ``rlimit``."""
        return self.cgroups.name if self.cgroups is not None else "rlimit"

    @property
    def can_change_limits(self) -> bool:
        """Whether a running session's limits can be changed (cgroups: yes; rlimits: no)."""
        return self.cgroups is not None

    def describe(self) -> dict[str, Any]:
        return {"sandbox": self.mode, "network": self.network, "limits": self.limits}

    def resources(self, raw: Any) -> Resources:
        """A create request's ``config.resources`` with the defaults applied (400 above max)."""
        return Resources.parse(raw).within(self.default, self.maximum)

    def for_session(
        self,
        session_id: str,
        owner: str | None,
        work_dir: Path,
        resources: Resources,
        mounts: Mapping[str, Path] | None = None,
    ) -> SessionIsolation:
        cgroup = self.cgroups.create(session_id, resources) if self.cgroups is not None else None
        try:
            return self._for_session(session_id, owner, work_dir, resources, mounts, cgroup)
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise

    def _for_session(
        self,
        session_id: str,
        owner: str | None,
        work_dir: Path,
        resources: Resources,
        mounts: Mapping[str, Path] | None,
        cgroup: SessionCgroup | None,
    ) -> SessionIsolation:
        uid = None
        if self.users is not None:
            # a pooled kernel (no owner yet) gets a user of its own, never a key's
            uid = self.users.uid_for(owner) if owner is not None else self.users.spare_uid()
        rlimits: dict[str, int] = {}
        if cgroup is None:
            if resources.mem is not None:
                rlimits["as"] = resources.mem
            if resources.pids is not None and uid is not None:
                rlimits["nproc"] = resources.pids  # per user: only meaningful with our own
        ipc_dir = None
        if self.bwrap:
            # A sandboxed kernel talks to the server over Unix sockets in a directory of its
            # own: no TCP ports to pick (jupyter_client's free-port choice races under load)
            # and none for other sessions to reach; required when it has no network.
            ipc_dir = Path(tempfile.mkdtemp(prefix="rk-"))
        folders = [str(path) for path in (mounts or {}).values()]
        ipython_dir = work_dir.parent / "ipython"  # the session's own history, beside its files
        ipython_dir.mkdir(exist_ok=True)
        if uid is not None:
            owned = [work_dir, ipython_dir, *map(Path, folders), *([ipc_dir] if ipc_dir else [])]
            for path in owned:
                os.chown(path, uid, uid)
        users_files = None
        if uid is not None and self.bwrap:
            etc = work_dir.parent / "etc"
            etc.mkdir(exist_ok=True)
            users_files = write_user_files(etc, uid, uid)
        plan = SandboxPlan(
            bwrap=self.bwrap or "",
            work_dir=str(work_dir),
            ro_paths=tuple(
                dict.fromkeys([*system_paths(), *python_paths(sys.executable), *self.extra_ro])
            ),
            rw_paths=tuple(folders),
            ipython_dir=str(ipython_dir),
            passwd=users_files[0] if users_files else None,
            group=users_files[1] if users_files else None,
            uid=uid,
            gid=uid,
            network=self.network,
            hostname=f"session-{session_id[:8]}",
            cgroup_procs=cgroup.procs_files if cgroup is not None else (),
            rlimits=rlimits,
            outlive_server=self.outlive_server,
        )
        return SessionIsolation(self, plan, resources, cgroup, ipc_dir)

    def recovered(
        self, session_id: str, plan: SandboxPlan, resources: Resources, ipc_dir: str | None
    ) -> SessionIsolation:
        """The isolation of a session whose kernel an earlier server process started: its
        plan as it was, its cgroup (opened again), its IPC directory."""
        cgroup = self.cgroups.create(session_id, resources) if self.cgroups is not None else None
        return SessionIsolation(self, plan, resources, cgroup, Path(ipc_dir) if ipc_dir else None)


class SessionIsolation:
    """One session's sandbox plan, cgroup and resources (see the module docstring)."""

    def __init__(
        self,
        isolation: Isolation,
        plan: SandboxPlan,
        resources: Resources,
        cgroup: SessionCgroup | None,
        ipc_dir: Path | None,
    ) -> None:
        self.isolation = isolation
        self.plan = plan
        self.resources = resources
        self.cgroup = cgroup
        self.ipc_dir = ipc_dir
        self._oom_seen = 0

    @property
    def sandboxed(self) -> bool:
        return bool(self.plan.bwrap)

    @property
    def home(self) -> str:
        """The work directory as the session's processes see it."""
        return "/home/work" if self.sandboxed else self.plan.work_dir

    def provisioner(self) -> dict[str, Any] | None:
        """The ``kernel_provisioner`` stanza that starts the kernel in this sandbox (None when
        there is neither a sandbox nor a limit to apply)."""
        if not (self.sandboxed or self.plan.cgroup_procs or self.plan.rlimits):
            return None
        return {"provisioner_name": PROVISIONER_NAME, "config": {"plan": self.plan.to_json()}}

    def env(self, environ: Mapping[str, str], server_env: Mapping[str, str]) -> dict[str, str]:
        """The environment of the session's processes. Sandboxed: a fixed set plus ``environ``;
        not sandboxed: ``server_env`` (the server's with ``environ`` on top) and its own IPython
        directory in the work directory."""
        if self.sandboxed:
            return sandbox_env(environ, path_dirs=[os.path.dirname(sys.executable)])
        env = dict(server_env)
        if "IPYTHONDIR" not in environ and self.plan.ipython_dir:
            env["IPYTHONDIR"] = self.plan.ipython_dir
        return env

    def command(
        self, cmd: Sequence[str], *, info_fd: int | None = None, new_session: bool = True
    ) -> list[str]:
        """``cmd`` in this session's sandbox and limits (batch steps and terminals; they end
        with the server). Without a sandbox, only the limits prefix (if any)."""
        if not self.sandboxed:
            return sandbox_command(self.plan, cmd)
        return sandbox_command(
            self.plan, cmd, info_fd=info_fd, new_session=new_session, die_with_parent=True
        )

    def set_resources(self, resources: Resources) -> None:
        """New limits for a running session (a pooled kernel taken by a create)."""
        if resources == self.resources:
            return
        if self.cgroup is None:
            raise RuntimeError("limits of a running session can only change through cgroups")
        self.cgroup.update(resources)
        self.resources = resources

    def new_oom_kill(self) -> bool:
        """Whether the system killed a process of this session for memory since last asked."""
        if self.cgroup is None:
            return False
        count = self.cgroup.oom_kills()
        seen, self._oom_seen = self._oom_seen, count
        return count > seen

    def oom_message(self) -> str:
        limit = self.resources.mem
        shown = format_size(limit) if limit is not None else "its memory limit"
        return (
            f"The cell used more memory than this session may use ({shown}, the 'mem' "
            "resource of the session) and the system stopped the kernel. The kernel has been "
            "restarted: variables are gone, files in the work directory stay. Ask for more "
            "memory when creating the session (config.resources.mem), or use less."
        )

    def close(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
        if self.ipc_dir is not None:
            shutil.rmtree(self.ipc_dir, ignore_errors=True)


def no_isolation(work_dir: Path) -> SessionIsolation:
    """For a runner built without a manager (tests): no sandbox, no limits."""
    plan = SandboxPlan(bwrap="", work_dir=str(work_dir))
    return SessionIsolation(Isolation(), plan, Resources(), None, None)
