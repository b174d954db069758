"""Completion, inspection, ``is_complete`` and history: the kernel's answers that run no cell.

A mixin of :class:`~remote_kernel.proxy.kernel.RemoteKernel`. Each asks the remote session (it
waits, briefly, for the session to exist) and falls back to an empty answer whenever the server
cannot help: a frontend's completion popup must never hang or show an error.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from ..client import RunLoopClient
from ..errors import RemoteKernelError
from . import magics, replies
from .history import CellHistory
from .session import RemoteSession

log = logging.getLogger(__name__)

#: Seconds an introspection request waits for the remote session to exist.
SESSION_WAIT = 10.0


class IntrospectionMixin:
    """``do_complete``, ``do_inspect``, ``do_is_complete``, ``do_history``."""

    remote: RemoteSession
    history: CellHistory
    _main_client: Callable[[], RunLoopClient]  # the kernel's client of its main event loop

    async def _idle_session(self) -> str | None:
        try:
            return await asyncio.wait_for(asyncio.shield(self.remote.start()), SESSION_WAIT)
        except (RemoteKernelError, asyncio.TimeoutError) as exc:
            log.info("no remote session for an introspection request: %s", exc)
            return None

    # -- completion, inspection, is_complete -------------------------------------------------------
    async def do_complete(self, code: str, cursor_pos: int | None) -> dict[str, Any]:
        pos = len(code) if cursor_pos is None else cursor_pos
        magic = magics.complete(code, pos)  # a %remote line is ours, not the remote's
        if magic is not None:
            if isinstance(magic, magics.PathQuery):
                return magics.path_reply(magic, await self._folder_names(magic))
            return magic
        sid = await self._idle_session()
        if sid is None:
            return replies.empty_complete(code, cursor_pos)
        pos = len(code) if cursor_pos is None else cursor_pos
        try:
            result = await self._main_client().complete(sid, code, pos)
        except (RemoteKernelError, asyncio.TimeoutError) as exc:
            log.info("completion failed: %s", exc)
            return replies.empty_complete(code, cursor_pos)
        return replies.complete_reply(result, code, cursor_pos)

    async def _folder_names(self, query: magics.PathQuery) -> list[tuple[str, bool]]:
        """(name, is_folder) in the folder a %remote path completion is in; [] on any error."""
        folder = query.folder.rstrip("/")
        if not query.remote:
            try:
                with os.scandir(os.path.expanduser(folder) or ".") as entries:
                    return [(e.name, e.is_dir()) for e in entries]
            except OSError:
                return []
        sid = await self._idle_session()
        if sid is None:
            return []
        try:
            path = magics.remote_path(folder, allow_top=True)
            listing = await asyncio.wait_for(
                _transfer().list_folder(self._main_client(), sid, path), SESSION_WAIT
            )
        except (RemoteKernelError, asyncio.TimeoutError, magics.MagicError) as exc:
            log.info("no completion of remote paths: %s", exc)
            return []
        return [(e.name, e.is_dir) for e in listing]

    async def do_inspect(
        self, code: str, cursor_pos: int, detail_level: int = 0, omit_sections: Any = ()
    ) -> dict[str, Any]:
        sid = await self._idle_session()
        if sid is None:
            return dict(replies.EMPTY_INSPECT)
        try:
            result = await self._main_client().inspect(sid, code, cursor_pos, detail_level)
        except (RemoteKernelError, asyncio.TimeoutError) as exc:
            log.info("inspection failed: %s", exc)
            return dict(replies.EMPTY_INSPECT)
        return replies.inspect_reply(result)

    async def do_is_complete(self, code: str) -> dict[str, Any]:
        sid = await self._idle_session()
        if sid is None:
            return {"status": "unknown"}
        try:
            result = await self._main_client().is_complete(sid, code)
        except (RemoteKernelError, asyncio.TimeoutError) as exc:
            log.info("is_complete failed: %s", exc)
            return {"status": "unknown"}
        return replies.is_complete_reply(result)

    # -- history (local: the cells this kernel ran) ------------------------------------------------
    async def do_history(
        self,
        hist_access_type: str,
        output: bool,
        raw: bool,
        session: int | None = None,
        start: int | None = None,
        stop: int | None = None,
        n: int | None = None,
        pattern: str | None = None,
        unique: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        history = self.history.query(
            hist_access_type, current=self.remote.generation or 1, output=output,
            session=session, start=start, stop=stop, n=n, pattern=pattern, unique=unique,
        )  # fmt: skip
        return {"status": "ok", "history": history}


def _transfer() -> Any:
    """The file-transfer module, loaded when a completion first needs a remote listing."""
    from . import transfer

    return transfer
