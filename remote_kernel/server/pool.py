"""A warm pool: kernels started ahead of time, each handed to exactly one new session.

A pooled kernel is started the same way as any session kernel (its own session id, work and
IPython directories, sandbox and cgroup with the default resources) by the factory the
:class:`~remote_kernel.server.sessions.SessionManager` gives; a create that the pool can serve
takes one (:meth:`KernelPool.take`) and the manager applies the session's environment and limits
to it. The pool refills in the background, one kernel at a time per image. A create it cannot
serve (another image, mounts, environment variables that only count at interpreter start, limits
that cannot change on a running process) starts a kernel as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runner import SessionRunner

log = logging.getLogger("remote_kernel.server")

#: Environment variables that only matter when the interpreter starts: a session that sets one
#: gets a fresh kernel, not a pooled one.
STARTUP_ENV = re.compile(r"^(PYTHON|LD_|OMP_|MKL_|OPENBLAS_|CUDA_|MALLOC_|JPY_)")
#: Seconds to wait before trying again after a pooled kernel failed to start.
RETRY_DELAY = 5.0


@dataclass
class Pooled:
    """One ready kernel and the session directory made for it."""

    session_id: str
    sdir: Path
    runner: SessionRunner


def env_fits(environ: Mapping[str, str]) -> bool:
    """Whether these variables can be applied to a running kernel (``os.environ``)."""
    return not any(STARTUP_ENV.match(name) for name in environ)


class KernelPool:
    """``size`` ready kernels for each kernelspec in ``kernel_names``."""

    def __init__(
        self,
        size: int,
        kernel_names: list[str],
        start: Callable[[str], Awaitable[Pooled]],
        discard: Callable[[Pooled], Awaitable[None]],
    ) -> None:
        self.size = size
        self.kernel_names = list(dict.fromkeys(kernel_names))
        self._start = start
        self._discard = discard
        self.ready: dict[str, deque[Pooled]] = {k: deque() for k in self.kernel_names}
        self._fillers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._closed = False
        self.served = 0
        self.missed = 0

    def offers(self, kernel_name: str) -> bool:
        return self.size > 0 and kernel_name in self.ready

    def start(self) -> None:
        """Begin filling (call on the running loop)."""
        if self.size <= 0:
            return
        for name in self.kernel_names:
            self._wake[name] = asyncio.Event()
            self._fillers[name] = asyncio.ensure_future(self._fill_forever(name))

    async def take(self, kernel_name: str) -> Pooled | None:
        """A ready kernel of this kernelspec, or None (the pool is empty or not for it)."""
        queue = self.ready.get(kernel_name)
        while queue:
            pooled = queue.popleft()
            self._wake[kernel_name].set()
            if await pooled.runner.km.is_alive():
                self.served += 1
                return pooled
            log.warning("pooled kernel %s had died; discarding it", pooled.session_id)
            await self._discard(pooled)
        self.missed += 1
        if kernel_name in self._wake:
            self._wake[kernel_name].set()
        return None

    async def _fill_forever(self, name: str) -> None:
        queue = self.ready[name]
        wake = self._wake[name]
        while not self._closed:
            if len(queue) >= self.size:
                wake.clear()
                await wake.wait()
                continue
            try:
                pooled = await self._start(name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not start a pooled %r kernel: %s", name, exc)
                await asyncio.sleep(RETRY_DELAY)
                continue
            if self._closed:
                await self._discard(pooled)
                return
            queue.append(pooled)

    async def close(self) -> None:
        """Stop filling and shut every pooled kernel down (their directories removed)."""
        self._closed = True
        for task in self._fillers.values():
            task.cancel()
        for task in self._fillers.values():
            with contextlib.suppress(BaseException):
                await task
        left = [p for q in self.ready.values() for p in q]
        for queue in self.ready.values():
            queue.clear()
        await asyncio.gather(*(self._discard(p) for p in left), return_exceptions=True)

    def __len__(self) -> int:
        return sum(len(q) for q in self.ready.values())
