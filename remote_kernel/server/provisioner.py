"""``SandboxProvisioner``: a jupyter_client kernel provisioner that starts kernels in a sandbox.

Registered as the ``remote-kernel-sandbox`` entry point of ``jupyter_client.kernel_provisioners``,
so it is chosen by name like any provisioner: the server names it (with the session's
:class:`~remote_kernel.server.sandbox.SandboxPlan` as its ``plan``) in the kernelspec metadata
of each session kernel it starts. Everything else is jupyter_client's ``LocalProvisioner``: the
connection file, ports, restarts, shutdown.

Two things differ from a local kernel:

- signals go to the sandbox's own process group (the kernel and its children), whose leader's
  host pid ``bwrap`` reports on ``--info-fd``; signalling the outer ``bwrap`` would kill it and
  orphan the kernel;
- the kernel sees only what the plan shows, so the connection file (and the kernelspec's own
  directory, for kernels that run files from it) are shown read-only too, and on a root server
  the connection file is handed to the session's user (it is the kernel's key).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Dict

from .sandbox import SandboxPlan, python_paths, read_child_pid, sandbox_command


class SandboxProvisioner(LocalProvisioner):  # type: ignore[misc]
    """A LocalProvisioner whose kernels run under bubblewrap (see the module docstring)."""

    plan = Dict(help="The session's SandboxPlan (SandboxPlan.to_json()).").tag(config=True)

    def _plan(self) -> SandboxPlan:
        return SandboxPlan.from_json(self.plan)

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        plan = self._plan()
        if not plan.bwrap:  # limits only
            return kwargs
        cmd: list[str] = list(kwargs["cmd"])
        shown = list(plan.ro_paths)
        if cmd:
            shown += [p for p in python_paths(cmd[0]) if p not in shown]
        resource_dir = getattr(self.kernel_spec, "resource_dir", None)
        if resource_dir and os.path.isdir(resource_dir):
            shown.append(str(resource_dir))
        km = self.parent
        rw = list(plan.rw_paths)
        connection_file = getattr(km, "connection_file", "") if km is not None else ""
        if connection_file:
            shown.append(connection_file)
            if plan.uid is not None:
                os.chown(connection_file, plan.uid, plan.gid if plan.gid is not None else plan.uid)
        if km is not None and getattr(km, "transport", "tcp") == "ipc":
            rw.append(os.path.dirname(km.ip))
        self.plan = SandboxPlan(
            **{**plan.__dict__, "ro_paths": tuple(dict.fromkeys(shown)), "rw_paths": tuple(rw)}
        ).to_json()
        kwargs["cmd"] = cmd
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        plan = self._plan()
        if not plan.bwrap:
            return await super().launch_kernel(sandbox_command(plan, cmd), **kwargs)
        read_end, write_end = os.pipe()
        try:
            # die_with_parent: a server that is killed must not leave its kernels behind (in a
            # pid namespace ipykernel cannot watch its parent, JPY_PARENT_PID means nothing),
            # unless the server recovers sessions: then a restarted server re-adopts them
            wrapped = sandbox_command(
                plan, cmd, info_fd=write_end, new_session=True,
                die_with_parent=not plan.outlive_server,
            )  # fmt: skip
            kwargs["pass_fds"] = (*kwargs.get("pass_fds", ()), write_end)
            info = await super().launch_kernel(wrapped, **kwargs)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        try:
            process = self.process
            child = await asyncio.to_thread(
                read_child_pid, read_end, lambda: process is not None and process.poll() is None
            )
        finally:
            os.close(read_end)
        # The sandbox's init leads a new session: its pgid is its pid, and the kernel is in it.
        self.pgid = child
        return info

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info["plan"] = self.plan
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.plan = provisioner_info.get("plan") or {}


class AdoptedProvisioner(LocalProvisioner):  # type: ignore[misc]
    """A kernel that an earlier server process started (session recovery), known by its pid.

    It is not this process's child, so there is no ``Popen``: it is alive while its pid is (and
    not a zombie), and signals go to its process group (a sandbox's own, for a sandboxed
    kernel). A restart starts a new kernel through the kernelspec's provisioner as usual.
    """

    @property
    def has_process(self) -> bool:
        return self.pid is not None

    async def poll(self) -> int | None:
        return None if self.pid is not None and pid_alive(self.pid) else 0

    async def wait(self) -> int | None:
        while await self.poll() is None:
            await asyncio.sleep(0.1)
        self.pid = None
        return 0

    async def send_signal(self, signum: int) -> None:
        if self.pid is None:
            return
        if self.pgid:
            try:
                os.killpg(self.pgid, signum)
                return
            except OSError:
                pass
        os.kill(self.pid, signum)

    async def kill(self, restart: bool = False) -> None:
        with contextlib.suppress(ProcessLookupError):
            await self.send_signal(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):  # the outer bwrap, if it outlived them
            if self.pid is not None:
                os.kill(self.pid, signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        with contextlib.suppress(ProcessLookupError):
            await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        return None  # its ports were never this process's to return


def pid_alive(pid: int) -> bool:
    """``pid`` names a live process (not a zombie waiting for its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True
