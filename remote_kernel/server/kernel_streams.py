"""Bounded stream messages from an IPython kernel: the server's memory does not follow its output.

ipykernel buffers what a cell writes to ``sys.stdout``/``sys.stderr`` and publishes the buffer
every 0.2 s, as one IOPub ``stream`` message. A cell printing fast fills tens of MB between two
flushes, and the server must receive such a message whole (a ZMQ frame) and decode it (JSON →
str) before its output cap can drop anything: a 50 MB message costs the server about 4 times
that at once, however small ``ServerApp.max_run_output_bytes`` is.

:func:`bound_stream_messages` asks an ipykernel kernel (``kernel_info`` says
``implementation: ipython``), once connected, to publish at most :data:`MAX_MESSAGE_CHARS`
characters per stream message: its ``sys.stdout``/``sys.stderr`` get a ``write`` that flushes
before the buffer would pass the bound and cuts a longer write into pieces. The text, its
order and its stream are unchanged (a frontend concatenates stream messages); only message
boundaries move. The request is ``silent`` (no execution count, no history, no output) and
leaves no name in the user's namespace; if anything is unexpected (another ``sys.stdout``, no
``ipykernel.iostream``) it changes nothing. Other kernels are left alone: the server still
bounds what it keeps, it just needs more memory to receive their large messages.

The cost is in the kernel: each write goes through one more Python function (about 1 µs; a
loop of short prints runs some 20% slower), and a cell flooding its output waits for its IOPub
thread at every bound instead of buffering tens of MB ahead of it (that backpressure is also
what lets a client that keeps polling collect such output without anything being dropped).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("remote_kernel.server")

#: Most characters of one stream message of an ipykernel kernel (at most 4 bytes each on the
#: wire). The server's transient cost of a message is about 4 times its size.
MAX_MESSAGE_CHARS = 262144

#: Runs in the kernel (``exec`` in a fresh namespace), with LIMIT replaced by the bound.
_KERNEL_CODE = """\
def _bound(limit):
    import sys
    from ipykernel.iostream import OutStream

    def bounded(stream, inner):
        state = stream.__dict__

        def write(string):
            # Only the write installed on the stream counts: one it wraps (IPython's around
            # every cell calls the one it replaced) passes straight through.
            if state.get("_remote_kernel_write") is not write or not isinstance(string, str):
                return inner(string)
            if len(string) > limit:
                for start in range(0, len(string), limit):
                    write(string[start : start + limit])
                return len(string)
            pending = state.get("_remote_kernel_pending", 0) + len(string)
            if pending > limit and pending > len(string):
                stream.flush()  # publishes what is buffered (waits for the IOPub thread)
                pending = len(string)
            state["_remote_kernel_pending"] = pending
            return inner(string)

        write.remote_kernel_inner = inner
        return write

    class BoundedOutStream:
        # `write` is a property: IPython (and users) replace `stream.write` on the instance
        # (IPython 9 does around every cell); what they set becomes the inner write.
        remote_kernel_limit = limit

        @property
        def write(self):
            wrapped = self.__dict__.get("_remote_kernel_write")
            if wrapped is None:
                wrapped = self.__dict__["_remote_kernel_write"] = bounded(self, super().write)
            return wrapped

        @write.setter
        def write(self, value):
            inner = getattr(value, "remote_kernel_inner", value)  # ours, set back: unwrap it
            self.__dict__["_remote_kernel_write"] = bounded(self, inner)

        @write.deleter
        def write(self):
            self.__dict__.pop("_remote_kernel_write", None)

    for name in ("stdout", "stderr"):
        stream = getattr(sys, name, None)
        base = type(stream)
        if not isinstance(stream, OutStream) or hasattr(base, "remote_kernel_limit"):
            continue
        bounded_class = type(base.__name__, (BoundedOutStream, base), {})
        bounded_class.__module__ = base.__module__
        stream.__dict__.pop("write", None)
        stream.__class__ = bounded_class

_bound(LIMIT)
"""


def kernel_code(limit: int = MAX_MESSAGE_CHARS) -> str:
    """The code :func:`bound_stream_messages` runs in the kernel (a one-line ``exec``)."""
    return f"exec({_KERNEL_CODE.replace('LIMIT', str(int(limit)))!r}, {{}})"


def is_ipykernel(kernel_info: dict[str, Any]) -> bool:
    """The kernel is ipykernel (its ``kernel_info_reply`` content says so)."""
    return kernel_info.get("implementation") == "ipython"


async def bound_stream_messages(
    kc: Any, kernel_info: dict[str, Any], *, limit: int = MAX_MESSAGE_CHARS, timeout: float = 10.0
) -> bool:
    """Have an ipykernel kernel publish at most ``limit`` characters per stream message.

    ``kc`` is the session's connected ``AsyncKernelClient``. Returns whether the kernel was asked
    (and answered ``ok``); any other kernel, or a failure, leaves it unchanged and returns False.
    """
    if not is_ipykernel(kernel_info):
        return False
    try:
        reply = await kc.execute(
            kernel_code(limit), silent=True, store_history=False, allow_stdin=False,
            reply=True, timeout=timeout,
        )  # fmt: skip
    except (TimeoutError, asyncio.TimeoutError, RuntimeError) as exc:
        log.warning("could not bound the kernel's stream messages: %s", exc)
        return False
    return bool(reply.get("content", {}).get("status") == "ok")
