"""Batch mode (protocol §1.6): a run's clean → build → exec steps as shell commands.

:class:`BatchRunner` runs the steps in a session's work directory, streams their stdout and
stderr into the :class:`~remote_kernel.server.runs.Run` as console records, and owns the step's
process while it runs, so that an interrupt (SIGINT) or a restart/destroy (SIGKILL) reaches it.
Queueing behind a running cell (the shell lock) is the caller's business:
:class:`~remote_kernel.server.runner.SessionRunner`.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import protocol as p
from ..errors import InvalidAPIParamsError
from .runs import Run
from .sandbox import read_child_pid

if TYPE_CHECKING:
    from .isolation import SessionIsolation

log = logging.getLogger("remote_kernel.server")


class BatchRunner:
    """Runs batch steps in ``work_dir`` with the environment ``env()`` returns."""

    def __init__(
        self,
        work_dir: Path,
        env: Callable[[], dict[str, str]],
        isolation: SessionIsolation | None = None,
    ) -> None:
        self.work_dir = work_dir
        self._env = env
        self._isolation = isolation
        self._proc: asyncio.subprocess.Process | None = None
        self._pgid: int | None = None  # the step's process group (in a sandbox: its own)

    async def run(self, run: Run, options: dict[str, Any]) -> None:
        """clean → build → exec; a failed build skips exec. The run is finished whatever
        happens (also when this is cancelled or a step cannot start)."""
        try:
            run.step_done(p.CLEAN_FINISHED, await self._step(run, "clean", options.get("clean")))
            code = await self._step(run, "build", options.get("build"))
            run.step_done(p.BUILD_FINISHED, code)
            if code != 0:
                run.emit([p.record(p.STDERR, f"Build failed (exit code {code}): exec skipped.\n")])
                run.finish(127)
                return
            run.finish(await self._step(run, "exec", options.get("exec")))
        except asyncio.CancelledError:
            run.finish(1)
            raise
        except Exception as exc:
            log.exception("batch run %s failed", run.run_id)
            run.emit([p.record(p.STDERR, f"The server could not run this batch: {exc}\n")])
            run.finish(1)

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to the running step's process group; False if no step is running."""
        proc = self._proc
        if proc is None or proc.returncode is not None or self._pgid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._pgid, sig)
        return True

    async def _step(self, run: Run, step: str, value: Any) -> int:
        command = batch_command(step, value, self.work_dir)
        if command is None:
            if step == "exec" and value == "*":
                run.emit([p.record(p.STDERR, "exec '*': there is no main.py to run.\n")])
                return 127
            return 0
        env = {**self._env(), "_BACKEND_BATCH_MODE": "1", "PYTHONUNBUFFERED": "1"}
        argv = ["/bin/sh", "-c", command]
        iso = self._isolation
        info = os.pipe() if iso is not None and iso.sandboxed else None
        if iso is not None:
            argv = iso.command(argv, info_fd=info[1] if info else None)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=self.work_dir, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True, pass_fds=(info[1],) if info else (),
            )  # fmt: skip
        except BaseException:
            if info:
                os.close(info[0])
            raise
        finally:
            if info:
                os.close(info[1])
        try:
            # In a sandbox the step runs in a process group of its own, led by the sandbox's
            # init: signals go there (the outer bwrap would die of a SIGINT).
            self._pgid = proc.pid
            if info:
                self._pgid = await asyncio.to_thread(
                    read_child_pid, info[0], lambda: proc.returncode is None
                )
        finally:
            if info:
                os.close(info[0])
        self._proc = proc
        try:
            assert proc.stdout is not None and proc.stderr is not None
            await asyncio.gather(
                _pump(proc.stdout, p.STDOUT, run), _pump(proc.stderr, p.STDERR, run)
            )
            code = await proc.wait()
        finally:
            self._proc = None
            self._pgid = None
        return code if code >= 0 else 128 - code


def batch_command(step: str, value: Any, work_dir: Path) -> str | None:
    """The shell command of a batch step; ``"*"`` is the Python default (protocol §1.6).

    clean ``*``: nothing. build ``*``: ``make`` when there is a Makefile, else nothing.
    exec ``*``: ``python main.py`` when there is a main.py (else exit code 127).
    """
    if not value:
        return None
    if not isinstance(value, str):
        raise InvalidAPIParamsError(f"Batch option {step!r} must be a shell command string.")
    if value != "*":
        return value
    if step == "build" and (work_dir / "Makefile").exists():
        return "make"
    if step == "exec" and (work_dir / "main.py").exists():
        return "python main.py"
    return None


async def _pump(stream: asyncio.StreamReader, kind: str, run: Run) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := await stream.read(64 * 1024):
        text = decoder.decode(chunk)
        if text:
            run.emit([p.record(kind, text)])
    tail = decoder.decode(b"", final=True)
    if tail:
        run.emit([p.record(kind, tail)])
