"""``SessionManager``: the compute sessions of every keypair, their images and their limits.

With ``recover_sessions``, each session is recorded in its directory (``session.json``, written
atomically whenever what recovery needs changes) and its kernel outlives a killed server: a
server started again on the same state directory re-adopts the live ones (same ids, names,
owners, work directories, a cell still running included) and cleans up what died. Sessions
whose client holds a lease are destroyed when that client has been gone ``orphan_timeout`` s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager

from ..errors import (
    InternalServerError,
    InvalidAPIParamsError,
    NotFoundError,
    RemoteKernelError,
    SessionAlreadyExistsError,
    SessionNotFoundError,
    TooManySessionsError,
)
from ..protocol import SESSION_NAME_RE
from .events import Event, EventHub
from .folders import FolderStore
from .isolation import Isolation
from .limits import Resources
from .pool import KernelPool, Pooled, env_fits
from .provisioner import pid_alive
from .runner import SessionRunner
from .sandbox import SandboxPlan

log = logging.getLogger("remote_kernel.server")

PYTHON_KERNEL = "python3"
WORK_PREFIX = "/home/work/"
#: A session's record for recovery, in its directory (it holds the kernel's key: 0600).
RECORD = "session.json"


@dataclass
class Session:
    """One compute session: a kernel, its work directory and who owns it."""

    id: str
    name: str
    owner: str
    image: str
    kernel_name: str
    runner: SessionRunner
    dir: Path
    config: dict[str, Any]
    mounts: dict[str, Path] = field(default_factory=dict)  # link in work dir -> folder
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    last_used: float = field(default_factory=time.monotonic)
    destroyed: bool = False  # being destroyed or gone: a channel still open refuses new work
    lease: bool = False  # its client holds a lease: destroyed when gone ``orphan_timeout`` s
    channels: int = 0  # push channels open (a client that holds one is there)
    recovered: bool = False  # re-adopted by this server after an earlier one was killed

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def info(self, *, kernel_info: bool) -> dict[str, Any]:
        """The flat object ``GET /session/{id}`` answers (Backend.AI's legacy session info)."""
        now = datetime.now(timezone.utc)
        requested = dict(self.config.get("resources") or {})
        resources = self.runner.isolation.resources.to_json()  # with the server's defaults
        body: dict[str, Any] = {
            "sessionId": self.id,
            "sessionName": self.name,
            "kernelName": self.kernel_name,
            "age": int((now - self.created).total_seconds() * 1000),
            "domainName": "default",
            "groupId": "default",
            "userId": self.owner,
            "lang": self.image,
            "image": self.image,
            "architecture": "x86_64",
            "registry": "local",
            "tag": self.image.rsplit(":", 1)[-1] if ":" in self.image else "latest",
            "containerId": self.id,
            "occupiedSlots": resources,
            "occupyingSlots": resources,
            "requestedSlots": requested,
            "occupiedShares": {},
            "environ": sorted((self.config.get("environ") or {}).keys()),
            "resourceOpts": self.config.get("resource_opts") or {},
            "status": "RUNNING",
            "statusInfo": "busy" if self.runner.busy else "idle",
            "statusData": {},
            "creationTime": self.created.isoformat(),
            "terminationTime": None,
            "numQueriesExecuted": self.runner.num_queries,
            "lastStat": {},
            "idleChecks": {},
        }
        if kernel_info:
            body["kernelInfo"] = self.runner.kernel_info
        return body


class ImageResolver:
    """Maps Backend.AI image references to the kernelspecs installed where the server runs.

    ``python`` with any registry, tag or suffix (``python:3.9-ubuntu20.04``,
    ``cr.backend.ai/stable/python-tensorflow:2.x``) is the server's Python kernel; any installed
    kernelspec name is an image of its own.
    """

    def __init__(self, ksm: KernelSpecManager | None = None) -> None:
        self.ksm = ksm or KernelSpecManager()

    def specs(self) -> list[str]:
        return sorted(self.ksm.find_kernel_specs())

    def resolve(self, image: str) -> str:
        if not isinstance(image, str) or not image.strip():
            raise InvalidAPIParamsError("'image' is required, e.g. \"python:3.11\".")
        specs = self.specs()
        base = image.rsplit("/", 1)[-1].split("@", 1)[0]
        name = base.split(":", 1)[0]
        for candidate in (image, base, name):
            if candidate in specs:
                return candidate
        if name.lower().startswith("python") and PYTHON_KERNEL in specs:
            return PYTHON_KERNEL
        available = ["python (any tag)", *[s for s in specs if s != PYTHON_KERNEL]]
        raise NotFoundError(
            f"Unknown image reference: {image!r}. Available images: {', '.join(available)}.",
            data={"available": available},
        )


class SessionManager:
    """Sessions by id and by (owner, name); creation, lookup, destruction and idle reaping."""

    def __init__(
        self,
        state_dir: Path,
        *,
        max_sessions_per_key: int = 16,
        idle_timeout: float = 0.0,
        runner_options: dict[str, Any] | None = None,
        images: ImageResolver | None = None,
        vfolder_root: Path | None = None,
        isolation: Isolation | None = None,
        pool_size: int = 0,
        pool_images: tuple[str, ...] = ("python",),
        recover_sessions: bool = False,
        orphan_timeout: float = 0.0,
        keep_work_dirs: bool = False,
    ) -> None:
        self.isolation = isolation or Isolation()
        self.recover_sessions = recover_sessions
        self.orphan_timeout = orphan_timeout
        self.keep_work_dirs = keep_work_dirs
        self.pool_size = pool_size
        self.pool_images = pool_images
        self.pool: KernelPool | None = None  # start_pool() makes it
        self.sessions_dir = Path(state_dir) / "sessions"
        self.vfolder_root = Path(vfolder_root or Path(state_dir) / "vfolders")
        self.vfolders = FolderStore(self.vfolder_root)  # each key's own folders (POST /folders)
        self.events = EventHub()
        self.max_sessions_per_key = max_sessions_per_key
        self.idle_timeout = idle_timeout
        self.runner_options = dict(runner_options or {})
        self.images = images or ImageResolver()
        self._by_id: dict[str, Session] = {}
        # Creates in progress: (owner, name) -> (its lock, creates holding or awaiting it);
        # per owner, the sessions being started (they count against max_sessions_per_key);
        # one event per start, set once it is registered or cleaned up.
        self._name_locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        self._starting: dict[str, int] = {}
        self._in_flight: set[asyncio.Event] = set()
        self._epoch = 0  # bumped by shutdown_all: a start that straddles it is undone
        self._stopping: set[asyncio.Task[None]] = set()  # destroys finishing in the background

    def owned_by(self, owner: str) -> list[Session]:
        return [s for s in self._by_id.values() if s.owner == owner]

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, owner: str, id_or_name: str) -> Session:
        """The caller's session by UUID or name; 404 for unknown or someone else's."""
        session = self._by_id.get(id_or_name)
        if session is None or session.owner != owner:
            session = next((s for s in self.owned_by(owner) if s.name == id_or_name), None)
        if session is None:
            raise SessionNotFoundError(f"No such session: {id_or_name!r}.")
        session.touch()
        return session

    async def create(
        self, owner: str, *, name: str | None, image: str, config: dict[str, Any], reuse: bool
    ) -> tuple[Session, bool]:
        """Create a session, or return the caller's live one of that name and image.

        Creates run concurrently: only creates of the same (owner, name) wait for each other,
        so the second one sees the first's session. A session being started holds one of its
        owner's ``max_sessions_per_key`` slots until it is registered or its start fails.
        """
        if name is not None and (not isinstance(name, str) or not SESSION_NAME_RE.match(name)):
            raise InvalidAPIParamsError(
                f"Invalid session name {name!r}: 4 to 64 characters, letters, digits, '_', "
                "'-' or '.', starting and ending with a letter, digit or '_'."
            )
        environ = config.get("environ") or {}
        if not isinstance(environ, dict):
            raise InvalidAPIParamsError("'config.environ' must be an object of strings.")
        if name is None:
            return await self._create(owner, name, image, config, environ, reuse)
        key = (owner, name)
        lock, waiters = self._name_locks.get(key) or (asyncio.Lock(), 0)
        self._name_locks[key] = (lock, waiters + 1)
        try:
            async with lock:
                return await self._create(owner, name, image, config, environ, reuse)
        finally:
            lock, waiters = self._name_locks[key]
            if waiters <= 1:
                del self._name_locks[key]
            else:
                self._name_locks[key] = (lock, waiters - 1)

    async def _create(
        self,
        owner: str,
        name: str | None,
        image: str,
        config: dict[str, Any],
        environ: dict[Any, Any],
        reuse: bool,
    ) -> tuple[Session, bool]:
        """The create itself; for a named session the caller holds that (owner, name)'s lock."""
        if name is not None:
            existing = next((s for s in self.owned_by(owner) if s.name == name), None)
            if existing is not None:
                if reuse and existing.image == image:
                    existing.touch()
                    return existing, False
                raise SessionAlreadyExistsError(
                    f"A session named {name!r} already exists with image {existing.image!r}.",
                    data={"existingSessionId": existing.id},
                )
        kernel_name = self.images.resolve(image)
        resources = self.isolation.resources(config.get("resources"))
        if len(self.owned_by(owner)) + self._starting.get(owner, 0) >= self.max_sessions_per_key:
            raise TooManySessionsError(
                f"This keypair already has {self.max_sessions_per_key} sessions; destroy one "
                "first (DELETE /session/{id}) or raise ServerApp.max_sessions_per_key."
            )
        folders = self._mount_plan(owner, config)
        # Reserve the slot with no await since the count above: concurrent creates see it.
        self._starting[owner] = self._starting.get(owner, 0) + 1
        done = asyncio.Event()  # shutdown_all waits for this start to be settled
        self._in_flight.add(done)
        epoch = self._epoch
        env = {str(k): str(v) for k, v in environ.items()}
        try:
            pooled = await self._from_pool(kernel_name, env, resources, folders)
            if pooled is not None:
                session_id, sdir, runner = pooled.session_id, pooled.sdir, pooled.runner
            else:
                session_id = str(uuid.uuid4())
                sdir = self.sessions_dir / session_id
                runner = self._new_runner(session_id, owner, kernel_name, env, resources, folders)
                await self._start_runner(runner, sdir)
            if self._epoch != epoch:  # shutdown_all began while this kernel started
                await runner.shutdown()
                shutil.rmtree(sdir, ignore_errors=True)
                raise InternalServerError(
                    "The server is shutting down; the session was not created.", status=503
                )
        finally:
            self._starting[owner] -= 1
            if not self._starting[owner]:
                del self._starting[owner]
            self._in_flight.discard(done)
            done.set()
        session = Session(
            id=session_id,
            name=name or f"session-{session_id[:8]}",
            owner=owner,
            image=image,
            kernel_name=kernel_name,
            runner=runner,
            dir=sdir,
            config=dict(config),
            mounts=folders,
            lease=config.get("lease") is True,
        )
        self._by_id[session_id] = session
        self._watch(session)
        for event in ("session_enqueued", "session_started", "kernel_started"):
            self._publish(event, session, "user-requested")
        log.info("session %s (%s) started: %s → %s", session.name, session_id, image, kernel_name)
        return session, True

    def _new_runner(
        self,
        session_id: str,
        owner: str | None,
        kernel_name: str,
        environ: dict[str, str],
        resources: Resources,
        folders: dict[str, Path],
    ) -> SessionRunner:
        """A session's directories, links to its folders, isolation and (unstarted) runner."""
        sdir = self.sessions_dir / session_id
        work = sdir / "work"
        work.mkdir(parents=True, exist_ok=True)
        try:
            for dest, folder in folders.items():
                link = work / dest
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(folder, target_is_directory=True)
            isolation = self.isolation.for_session(session_id, owner, work, resources, folders)
        except BaseException:
            shutil.rmtree(sdir, ignore_errors=True)
            raise
        return SessionRunner(
            kernel_name, work, sdir / "kernel.log", environ=environ, isolation=isolation,
            **self.runner_options,
        )  # fmt: skip

    @staticmethod
    async def _start_runner(runner: SessionRunner, sdir: Path) -> None:
        """Start the kernel; on any failure (or cancellation) leave nothing behind."""
        try:
            await runner.start()
        except BaseException:
            await runner.shutdown()
            shutil.rmtree(sdir, ignore_errors=True)
            raise

    # -- the warm pool ------------------------------------------------------------------------
    def start_pool(self) -> None:
        """Keep ``pool_size`` kernels ready for each of ``pool_images`` (on the running loop)."""
        if self.pool_size <= 0 or self.pool is not None:
            return
        names = []
        for image in self.pool_images:
            try:
                names.append(self.images.resolve(image))
            except RemoteKernelError as exc:
                log.warning("pool image %r: %s", image, exc)
        self.pool = KernelPool(self.pool_size, names, self._start_pooled, self._discard_pooled)
        self.pool.start()

    async def _start_pooled(self, kernel_name: str) -> Pooled:
        session_id = str(uuid.uuid4())
        sdir = self.sessions_dir / session_id
        runner = self._new_runner(session_id, None, kernel_name, {}, self.isolation.default, {})
        if self.recover_sessions:  # a killed server's successor stops it: nobody's session
            runner.on_change = lambda: _write_record(sdir, {"pooled": True, **runner.snapshot()})
        await self._start_runner(runner, sdir)
        return Pooled(session_id, sdir, runner)

    @staticmethod
    async def _discard_pooled(pooled: Pooled) -> None:
        await pooled.runner.shutdown()
        shutil.rmtree(pooled.sdir, ignore_errors=True)

    async def _from_pool(
        self,
        kernel_name: str,
        environ: dict[str, str],
        resources: Resources,
        folders: dict[str, Path],
    ) -> Pooled | None:
        """A pooled kernel made this session's (its environment and limits applied), or None
        when the pool cannot serve this create."""
        pool = self.pool
        if pool is None or not pool.offers(kernel_name) or folders or not env_fits(environ):
            return None
        if resources != self.isolation.default and not self.isolation.can_change_limits:
            return None
        pooled = await pool.take(kernel_name)
        if pooled is None:
            return None
        try:
            await pooled.runner.adopt(environ, resources)
        except BaseException as exc:
            await self._discard_pooled(pooled)
            if isinstance(exc, Exception):  # it cannot be this session's: start one instead
                log.warning("pooled kernel not usable for this session: %s", exc)
                return None
            raise
        return pooled

    def _publish(self, name: str, session: Session, reason: str) -> None:
        self.events.publish(Event(name, session.owner, session.id, session.name, reason))

    def _mount_plan(self, owner: str, config: dict[str, Any]) -> dict[str, Path]:
        """The folders to mount → {path inside the work dir: folder on the server}.

        ``config.mounts`` / ``mount_map`` name the caller's own folders (``POST /folders``),
        ``mount_ids`` / ``mount_id_map`` give their ids (the 26.x SDK); folders outlive
        sessions. A folder the caller does not have is 404 (listing the caller's folders only),
        a name or destination that would escape is 400.
        """
        mounts = config.get("mounts") or []
        mount_map = config.get("mount_map") or {}
        mount_ids = config.get("mount_ids") or []
        mount_id_map = config.get("mount_id_map") or {}
        if not all(isinstance(x, list) for x in (mounts, mount_ids)) or not all(
            isinstance(x, dict) for x in (mount_map, mount_id_map)
        ):
            raise InvalidAPIParamsError(
                "'config.mounts' and 'mount_ids' must be lists, 'mount_map' and 'mount_id_map' "
                "objects."
            )
        wanted: list[tuple[Path, Any]] = []
        for name in [*mounts, *[m for m in mount_map if m not in mounts]]:
            wanted.append((self.vfolders.mount_source(owner, name), mount_map.get(name) or name))
        for key in [*mount_ids, *[m for m in mount_id_map if m not in mount_ids]]:
            folder = self.vfolders.by_id(owner, key)
            wanted.append((folder.path.resolve(), mount_id_map.get(key) or folder.name))
        plan: dict[str, Path] = {}
        for source, target in wanted:
            dest = str(target)
            if dest.startswith(WORK_PREFIX):
                dest = dest[len(WORK_PREFIX) :]
            parts = dest.strip("/").split("/")
            if dest.startswith("/") or not dest.strip("/") or ".." in parts or "." in parts:
                raise InvalidAPIParamsError(
                    f"Mount destination {dest!r} must be a path inside the work directory."
                )
            plan["/".join(parts)] = source
        return plan

    async def restart(self, session: Session) -> None:
        self._publish("kernel_terminated", session, "restarting")
        await session.runner.restart()
        self._publish("kernel_started", session, "restarted")

    async def destroy(
        self, session: Session, reason: str = "user-requested", *, wait: bool = True
    ) -> None:
        """Stop the kernel and delete the session's work directory (mounted folders stay).

        The session is gone at once (404, its name free, its channel refusing work); with
        ``wait`` false the kernel is stopped and the directory removed in the background (a
        client's DELETE does not wait for them: a kernel restart from the frontend is that
        much faster), and :meth:`shutdown_all` waits for them."""
        if self._by_id.pop(session.id, None) is None:
            return
        session.destroyed = True
        session.runner.on_change = None
        self._publish("session_terminating", session, reason)
        if wait:
            await self._stop(session, reason)
            return
        task = asyncio.ensure_future(self._stop(session, reason))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _stop(self, session: Session, reason: str) -> None:
        await session.runner.shutdown()
        for dest in session.mounts:  # unlink first: rmtree never follows links, but be explicit
            with contextlib.suppress(OSError):
                (session.runner.work_dir / dest).unlink()
        self._remove_dir(session.dir)
        self._publish("kernel_terminated", session, reason)
        self._publish("session_terminated", session, reason)
        log.info("session %s (%s) destroyed", session.name, session.id)

    async def shutdown_all(self) -> None:
        """Destroy every session and pooled kernel, and wait for kernels still starting: they
        are shut down."""
        self._epoch += 1
        if self.pool is not None:
            await self.pool.close()
        starting = [done.wait() for done in self._in_flight]
        sessions = list(self._by_id.values())
        await asyncio.gather(
            *(self.destroy(s) for s in sessions), *starting, *self._stopping,
            return_exceptions=True,
        )  # fmt: skip

    def _remove_dir(self, sdir: Path) -> None:
        """A destroyed session's directory goes (with ``keep_work_dirs``, all but its files)."""
        if not self.keep_work_dirs:
            shutil.rmtree(sdir, ignore_errors=True)
            return
        for entry in sdir.iterdir() if sdir.is_dir() else ():
            if entry.name != "work":
                with contextlib.suppress(OSError):
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    # -- recovery --------------------------------------------------------------------------------
    def _watch(self, session: Session) -> None:
        """Record the session now and whenever what recovery needs changes."""
        if not self.recover_sessions:
            return
        session.runner.on_change = lambda: self._save(session)
        self._save(session)

    def _save(self, session: Session) -> None:
        if session.destroyed:
            return
        record = {
            "id": session.id, "name": session.name, "owner": session.owner,
            "image": session.image, "config": session.config,
            "mounts": {dest: str(path) for dest, path in session.mounts.items()},
            "created": session.created.isoformat(), "lease": session.lease,
            **session.runner.snapshot(),
        }  # fmt: skip
        try:
            _write_record(session.dir, record)
        except OSError as exc:
            log.warning("could not record session %s for recovery: %s", session.id, exc)

    async def recover(self) -> None:
        """At start: re-adopt the sessions whose kernels outlived a killed server (with
        ``recover_sessions``); stop and clean up every other kernel and directory left behind."""
        if not self.sessions_dir.is_dir():
            return
        for sdir in sorted(p for p in self.sessions_dir.iterdir() if p.is_dir()):
            record = _read_record(sdir)
            session = None
            if record is not None and self.recover_sessions and not record.get("pooled"):
                try:
                    session = await self._adopt(sdir, record)
                except Exception as exc:
                    log.warning("session %s could not be re-adopted: %s", sdir.name, exc)
            if session is None:
                await self._bury(sdir, record)

    async def _adopt(self, sdir: Path, record: dict[str, Any]) -> Session | None:
        process = record.get("process") or {}
        pid = process.get("pid")
        if not isinstance(pid, int) or not pid_alive(pid):
            return None
        session_id = str(record["id"])
        resources = Resources.parse(record.get("resources") or {})
        plan = SandboxPlan.from_json(record.get("plan") or {"work_dir": str(sdir / "work")})
        isolation = self.isolation.recovered(session_id, plan, resources, record.get("ipcDir"))
        runner = await SessionRunner.recover(
            record, sdir / "work", sdir / "kernel.log", isolation, **self.runner_options
        )
        try:
            await asyncio.wait_for(_control_ping(runner), 10)
        except BaseException:
            await runner.shutdown()
            raise
        session = Session(
            id=session_id, name=str(record["name"]), owner=str(record["owner"]),
            image=str(record["image"]), kernel_name=str(record["kernelName"]), runner=runner,
            dir=sdir, config=dict(record.get("config") or {}),
            mounts={d: Path(p) for d, p in (record.get("mounts") or {}).items()},
            created=datetime.fromisoformat(record["created"]), lease=bool(record.get("lease")),
            recovered=True,
        )  # fmt: skip
        self._by_id[session_id] = session
        self._watch(session)
        log.info("session %s (%s) re-adopted%s", session.name, session_id,
                 ", with a cell running" if runner.busy else "")  # fmt: skip
        return session

    async def _bury(self, sdir: Path, record: dict[str, Any] | None) -> None:
        """A session (or pooled kernel) that will not be re-adopted: its kernel stopped, its
        cgroup, IPC directory and (unless ``keep_work_dirs``) directory removed."""
        process = (record or {}).get("process") or {}
        pid, pgid = process.get("pid"), process.get("pgid")
        for target, kill in ((pgid, os.killpg), (pid, os.kill)):
            if isinstance(target, int) and target > 1:
                with contextlib.suppress(OSError):
                    kill(target, signal.SIGKILL)
        if isinstance(pid, int):
            for _ in range(50):
                if not pid_alive(pid):
                    break
                await asyncio.sleep(0.05)
        if record is not None and self.isolation.cgroups is not None:
            with contextlib.suppress(Exception):
                self.isolation.cgroups.create(sdir.name, Resources()).remove()
        ipc_dir = (record or {}).get("ipcDir")
        if ipc_dir:
            shutil.rmtree(ipc_dir, ignore_errors=True)
        if record is not None and record.get("pooled"):
            shutil.rmtree(sdir, ignore_errors=True)
        else:
            self._remove_dir(sdir)
        log.info("cleaned up %s left by an earlier server", sdir.name)

    def orphaned(self, now: float | None = None) -> list[Session]:
        """Leased sessions whose client has been gone ``orphan_timeout`` s (no request, no
        open channel), even with a cell running or waiting for input."""
        if self.orphan_timeout <= 0:
            return []
        now = time.monotonic() if now is None else now
        return [
            s
            for s in self._by_id.values()
            if s.lease and s.channels == 0 and now - s.last_used > self.orphan_timeout
        ]

    def idle_sessions(self, now: float | None = None) -> list[Session]:
        if self.idle_timeout <= 0:
            return []
        now = time.monotonic() if now is None else now
        return [
            s
            for s in self._by_id.values()
            if not s.runner.busy and now - s.last_used > self.idle_timeout
        ]

    async def reap_forever(self) -> None:
        """Destroy idle sessions (no running cell, unused ``idle_timeout`` s) and orphaned ones
        (a leased session whose client is gone ``orphan_timeout`` s) until cancelled."""
        timeouts = [t for t in (self.idle_timeout, self.orphan_timeout) if t > 0]
        if not timeouts:
            return
        interval = max(0.5, min(30.0, min(timeouts) / 4))
        while True:
            await asyncio.sleep(interval)
            for session in self.orphaned():
                log.info("session %s: its client is gone for over %ss: destroying",
                         session.name, self.orphan_timeout)  # fmt: skip
                with contextlib.suppress(Exception):
                    await self.destroy(session, reason="orphaned")
            for session in self.idle_sessions():
                log.info(
                    "session %s idle for over %ss: destroying", session.name, self.idle_timeout
                )
                with contextlib.suppress(Exception):
                    await self.destroy(session, reason="idle-timeout")


def _write_record(sdir: Path, record: dict[str, Any]) -> None:
    """Write ``sdir/session.json`` atomically (a crash leaves the old one or the new one)."""
    tmp = sdir / f".{RECORD}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(record, out)
    os.replace(tmp, sdir / RECORD)


def _read_record(sdir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((sdir / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


async def _control_ping(runner: SessionRunner) -> None:
    """A re-adopted kernel answers on its control channel (even with a cell running)."""
    kc = runner.kc
    msg = kc.session.msg("kernel_info_request")
    kc.control_channel.send(msg)
    while True:
        reply = await kc.control_channel.get_msg(timeout=10)
        if reply.get("parent_header", {}).get("msg_id") == msg["header"]["msg_id"]:
            return
