"""A session's resource slots (``config.resources``) and how they are enforced: cgroups.

:class:`Resources` is what a session may use (cpu cores, memory, processes), parsed from the
create request the way Backend.AI reads resource slots (``{"cpu": 1, "mem": "512m"}``).
:class:`CgroupTree` finds where this server may create cgroups (v1 or v2), and makes one
:class:`SessionCgroup` per session; the sandbox joins it before the kernel starts
(:func:`~remote_kernel.server.sandbox.sandbox_command`). Where no cgroup can be made, the
sandbox falls back to rlimits (address space and process count; no CPU limit).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidAPIParamsError

log = logging.getLogger("remote_kernel.server")

KNOWN_SLOTS = ("cpu", "mem")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
#: Seconds after which an empty session cgroup with no server session is someone's leftover.
STALE_AFTER = 60.0
#: The cgroup v1 CFS period (µs) used for CPU quotas.
CFS_PERIOD_US = 100_000


def parse_size(value: Any, *, what: str = "mem") -> int:
    """Bytes from ``512m``, ``1g``, ``1.5GiB``, ``268435456`` (Backend.AI's binary sizes)."""
    if isinstance(value, bool):
        raise InvalidAPIParamsError(f'{what!r} must be a size such as "512m" or "2g".')
    if isinstance(value, int | float):
        if value <= 0 or not math.isfinite(value):
            raise InvalidAPIParamsError(f"{what!r} must be a positive size, not {value!r}.")
        return int(value)
    match = _SIZE_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidAPIParamsError(
            f'{what!r} must be a size such as "512m" or "2g", not {str(value)[:40]!r}.'
        )
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise InvalidAPIParamsError(f"{what!r} must be a positive size, not {value!r}.")
    return size


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"


def _parse_cpu(value: Any) -> float:
    try:
        cpu = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        cpu = math.nan
    if not math.isfinite(cpu) or cpu <= 0:
        raise InvalidAPIParamsError(f"'cpu' must be a positive number of cores, not {value!r}.")
    return cpu


@dataclass(frozen=True)
class Resources:
    """What one session may use; None is "no limit of this kind"."""

    cpu: float | None = None
    mem: int | None = None
    pids: int | None = None

    @classmethod
    def parse(cls, raw: Any) -> Resources:
        """From a ``config.resources`` object (or a server setting of the same form)."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise InvalidAPIParamsError(
                """'config.resources' must be an object of resource slots, e.g. """
                """{"cpu": 1, "mem": "512m"}."""
            )
        for slot, value in raw.items():
            if slot not in (*KNOWN_SLOTS, "pids") and value not in (0, "0", None):
                raise InvalidAPIParamsError(
                    f"This server has no resource slot {slot!r}; it offers "
                    f"{', '.join(KNOWN_SLOTS)}.",
                    data={"slots": list(KNOWN_SLOTS)},
                )
        cpu = raw.get("cpu")
        mem = raw.get("mem")
        pids = raw.get("pids")
        if pids is not None and (not isinstance(pids, int) or isinstance(pids, bool) or pids < 1):
            raise InvalidAPIParamsError(f"'pids' must be a positive integer, not {pids!r}.")
        return cls(
            cpu=None if cpu is None else _parse_cpu(cpu),
            mem=None if mem is None else parse_size(mem),
            pids=pids,
        )

    def within(self, default: Resources, maximum: Resources) -> Resources:
        """These slots, ``default`` where unset; 400 when one is above ``maximum``."""
        merged = Resources(
            cpu=self.cpu if self.cpu is not None else default.cpu,
            mem=self.mem if self.mem is not None else default.mem,
            pids=self.pids if self.pids is not None else default.pids,
        )
        for slot, shown in (("cpu", str), ("mem", format_size), ("pids", str)):
            asked, most = getattr(merged, slot), getattr(maximum, slot)
            if most is not None and (asked is None or asked > most):
                if asked is None:
                    merged = Resources(**{**merged.__dict__, slot: most})
                    continue
                raise InvalidAPIParamsError(
                    f"The session asks for {slot} {shown(asked)}; this server allows at most "
                    f"{shown(most)} per session (ServerApp.max_resources).",
                    data={"slot": slot, "maximum": most},
                )
        return merged

    def to_json(self) -> dict[str, Any]:
        """As Backend.AI reports slots: cpu as a number, mem in bytes (as a string)."""
        out: dict[str, Any] = {}
        if self.cpu is not None:
            out["cpu"] = self.cpu
        if self.mem is not None:
            out["mem"] = str(self.mem)
        if self.pids is not None:
            out["pids"] = self.pids
        return out

    def describe(self) -> str:
        parts = []
        if self.cpu is not None:
            parts.append(f"{self.cpu:g} CPU")
        if self.mem is not None:
            parts.append(f"{format_size(self.mem)} memory")
        if self.pids is not None:
            parts.append(f"{self.pids} processes")
        return ", ".join(parts) or "no limits"


# -- cgroups ----------------------------------------------------------------------------------
def _own_cgroups(proc: Path) -> dict[str, str]:
    """controller (or "" for v2) → this process's cgroup path, from /proc/self/cgroup."""
    found: dict[str, str] = {}
    for line in (proc / "self" / "cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            found[name] = path
    return found


def _mounts(proc: Path) -> list[tuple[str, str, str, set[str]]]:
    """(fs type, root, mount point, super options) of each cgroup mount."""
    mounts = []
    for line in (proc / "self" / "mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append((tail[0], fields[3], fields[4], set(tail[2].split(","))))
    return mounts


class SessionCgroup:
    """One session's cgroups (one per controller on v1, one on v2)."""

    def __init__(self, version: int, dirs: dict[str, Path], resources: Resources) -> None:
        self.version = version
        self.dirs = dirs
        self.resources = resources

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(str(d / "cgroup.procs") for d in dict.fromkeys(self.dirs.values()))

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has killed in this session."""
        mem = self.dirs.get("memory")
        if mem is None:
            return 0
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        with contextlib.suppress(OSError, ValueError):
            for line in (mem / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def update(self, resources: Resources) -> None:
        """Write new limits (a slot now unset goes back to no limit)."""
        tree = CgroupTree(self.version, {})
        unset = Resources(
            cpu=-1.0 if resources.cpu is None and self.resources.cpu is not None else None,
            mem=-1 if resources.mem is None and self.resources.mem is not None else None,
            pids=-1 if resources.pids is None and self.resources.pids is not None else None,
        )
        tree._write_limits(self.dirs, unset)
        tree._write_limits(self.dirs, resources)
        self.resources = resources

    def remove(self) -> None:
        """Kill whatever is left in the session's cgroups, then remove them."""
        for directory in dict.fromkeys(self.dirs.values()):
            for _ in range(50):
                try:
                    pids = (directory / "cgroup.procs").read_text().split()
                except OSError:
                    break
                for pid in pids:
                    with contextlib.suppress(OSError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
            else:
                log.warning("could not remove cgroup %s", directory)


class CgroupTree:
    """Where this server makes its sessions' cgroups: ``<own cgroup>/remote-kernel/<session>``."""

    CONTROLLERS = ("memory", "pids", "cpu")

    def __init__(self, version: int, bases: dict[str, Path]) -> None:
        self.version = version
        self.bases = bases  # controller → the "remote-kernel" directory (v2: all the same)

    @property
    def name(self) -> str:
        return f"cgroup-v{self.version}"

    @classmethod
    def detect(
        cls, *, proc: Path = Path("/proc"), name: str = "remote-kernel"
    ) -> CgroupTree | None:
        """The cgroups this process may create, or None (then rlimits are the fallback)."""
        try:
            own = _own_cgroups(proc)
            mounts = _mounts(proc)
        except (OSError, ValueError):
            return None
        v2 = [m for m in mounts if m[0] == "cgroup2"]
        v1 = {c: m for m in mounts if m[0] == "cgroup" for c in cls.CONTROLLERS if c in m[3]}
        try:
            if set(v1) >= {"memory", "pids"}:
                return cls._v1(own, v1, name)
            if v2 and (Path(v2[0][2]) / "cgroup.controllers").exists():
                return cls._v2(own, v2[0], name)
        except OSError as exc:
            log.info("cgroups are not writable here (%s); limits fall back to rlimits", exc)
        return None

    @classmethod
    def _v1(
        cls, own: dict[str, str], mounts: dict[str, tuple[str, str, str, set[str]]], name: str
    ) -> CgroupTree:
        bases: dict[str, Path] = {}
        for controller, (_, root, point, _) in mounts.items():
            path = own.get(controller, "/")
            rel = path[len(root) :] if path.startswith(root) else path
            base = Path(point) / rel.lstrip("/") / name
            base.mkdir(parents=True, exist_ok=True)
            if controller == "memory":
                with contextlib.suppress(OSError):
                    (base / "memory.use_hierarchy").write_text("1")
            bases[controller] = base
        return cls(1, bases)

    @classmethod
    def _v2(
        cls, own: dict[str, str], mount: tuple[str, str, str, set[str]], name: str
    ) -> CgroupTree:
        _, root, point, _ = mount
        path = own.get("", "/")
        rel = path[len(root) :] if path.startswith(root) else path
        parent = Path(point) / rel.lstrip("/")
        available = set((parent / "cgroup.controllers").read_text().split())
        wanted = [c for c in cls.CONTROLLERS if c in available]
        if "memory" not in wanted:
            raise OSError(f"the memory controller is not delegated to {parent}")
        procs = (parent / "cgroup.procs").read_text().split()
        if procs and parent != Path(point):
            # "No internal processes": move this cgroup's processes (the server) into a leaf.
            leaf = parent / "server"
            leaf.mkdir(exist_ok=True)
            for pid in procs:
                with contextlib.suppress(OSError):
                    (leaf / "cgroup.procs").write_text(pid)
        enable = " ".join(f"+{c}" for c in wanted)
        (parent / "cgroup.subtree_control").write_text(enable)
        base = parent / name
        base.mkdir(exist_ok=True)
        (base / "cgroup.subtree_control").write_text(enable)
        return cls(2, {c: base for c in wanted})

    def sweep(self, older_than: float = STALE_AFTER) -> int:
        """Remove the empty session cgroups that servers killed before they could clean up
        left behind (a cgroup with processes cannot be removed; a fresh one is spared, it may
        be a session starting in another server). Returns how many went."""
        removed = 0
        now = time.time()
        for base in dict.fromkeys(self.bases.values()):
            with contextlib.suppress(OSError):
                for child in base.iterdir():
                    if not child.is_dir():
                        continue
                    with contextlib.suppress(OSError):
                        if now - child.stat().st_mtime > older_than:
                            child.rmdir()
                            removed += 1
        return removed

    def create(self, session_id: str, resources: Resources) -> SessionCgroup:
        """The session's cgroups with its limits written (swap counted in the memory limit)."""
        dirs: dict[str, Path] = {}
        try:
            for controller, base in self.bases.items():
                directory = base / session_id
                directory.mkdir(exist_ok=True)
                dirs[controller] = directory
            self._write_limits(dirs, resources)
        except OSError:
            SessionCgroup(self.version, dirs, resources).remove()
            raise
        return SessionCgroup(self.version, dirs, resources)

    def _write_limits(self, dirs: dict[str, Path], res: Resources) -> None:
        """Write the limits ``res`` sets (a negative value: remove that limit)."""
        mem, pids, cpu = dirs.get("memory"), dirs.get("pids"), dirs.get("cpu")
        if self.version == 1:
            if mem is not None and res.mem is not None:
                value = str(res.mem) if res.mem >= 0 else "-1"
                memsw = mem / "memory.memsw.limit_in_bytes"
                if memsw.exists():  # memory+swap may never be below memory: order matters
                    with contextlib.suppress(OSError):  # raising: refused until memsw is
                        (mem / "memory.limit_in_bytes").write_text(value)
                    memsw.write_text(value)
                (mem / "memory.limit_in_bytes").write_text(value)
            if pids is not None and res.pids is not None:
                (pids / "pids.max").write_text(str(res.pids) if res.pids >= 0 else "max")
            if cpu is not None and res.cpu is not None:
                (cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
                quota = int(res.cpu * CFS_PERIOD_US) if res.cpu >= 0 else -1
                (cpu / "cpu.cfs_quota_us").write_text(str(quota))
            return
        if mem is not None and res.mem is not None:
            (mem / "memory.max").write_text(str(res.mem) if res.mem >= 0 else "max")
            swap = mem / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
        if pids is not None and res.pids is not None:
            (pids / "pids.max").write_text(str(res.pids) if res.pids >= 0 else "max")
        if cpu is not None and res.cpu is not None:
            most = str(int(res.cpu * CFS_PERIOD_US)) if res.cpu >= 0 else "max"
            (cpu / "cpu.max").write_text(f"{most} {CFS_PERIOD_US}")

    def cleanup(self) -> None:
        """Remove the (empty) ``remote-kernel`` directories at server shutdown."""
        for base in dict.fromkeys(self.bases.values()):
            with contextlib.suppress(OSError):
                base.rmdir()
