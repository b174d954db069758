"""Loopback TCP relays for tests and benchmarks: added latency and injected connection aborts.

A :class:`Relay` listens on ``127.0.0.1:<free port>`` and pipes every accepted connection to a
target ``(host, port)``, byte for byte, so it works for HTTP/1.1 keep-alive and for WebSockets
alike. Options:

* ``delay``: seconds added to each direction (a 20 ms round trip is ``delay=0.010``). Every
  chunk read at time *t* is written at *t + delay* through a timed FIFO per direction, so order is
  kept and bandwidth is not capped by per-chunk sleeps. ``delay`` may be changed while running;
  it applies to data read after the change.
* ``abort_rate``: the probability that a connection is aborted. For such a connection one
  direction (client->server or server->client, equally likely) and a byte offset, uniform in
  ``1..abort_window`` (4096), are drawn; the bytes before that offset are delivered, then both
  sockets are closed abruptly (RST via ``SO_LINGER 0``). Aborting early in client->server cuts a
  request before the server saw it whole; in server->client, after the server acted but before
  the response got back. If that direction ends (EOF) before the offset, the connection is aborted
  at that point instead of being closed cleanly, so every chosen connection is aborted.
* ``handshake``: also make each new connection wait one round trip (``2 * delay``) before
  anything flows, as a TCP handshake over such a link would; off by default. Keep-alive clients
  pay it once per connection, clients that connect per request pay it every time.
* ``per_read``: draw the abort decision anew for every chunk the relay reads (about one request,
  one response or one burst of WebSocket frames; probability ``abort_rate / 2`` per chunk in each
  direction, cut at a random byte inside it), instead of once per connection: long-lived
  keep-alive connections and WebSockets then keep meeting faults, as requests over a flaky link
  do, and a large response is still delivered nine times in ten.
* ``block_websocket``: reset every connection that asks for a WebSocket upgrade, as some
  corporate proxies do (HTTP requests pass).
* ``seed``: for reproducible abort decisions (drawn in accept order).

Counters: ``connections`` (accepted) and ``aborted`` (injected aborts).

Inside a running event loop::

    relay = Relay("127.0.0.1", 8888, delay=0.01)
    await relay.start()
    ...  # use relay.url
    await relay.stop()

From synchronous code (the relay runs its own loop in a daemon thread)::

    with running_relay("127.0.0.1", 8888, delay=0.01) as relay:
        requests.get(relay.url)

As a process (used by the benchmarks, to keep the relay off the measuring process's GIL)::

    python tests/relay.py TARGET_HOST TARGET_PORT [--delay S] [--abort-rate P] [--seed N]
        [--handshake]

prints ``listening PORT`` and then obeys stdin lines ``delay SECONDS`` / ``abort_rate P``
(answering ``ok``) and ``stats`` (answering ``connections N aborted M``); EOF on stdin stops it.

Stdlib only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["Relay", "RelayThread", "running_relay"]

_CHUNK = 64 * 1024
#: Bytes read ahead per direction before reading pauses (bounds memory for slow receivers).
_MAX_BUFFERED = 16 * 1024 * 1024
_EOF = object()
_ABORT = object()


def _set_rst_on_close(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Direction:
    """One direction of a connection: a reader task filling a timed FIFO, a writer task
    emptying it at each chunk's deadline."""

    def __init__(
        self,
        conn: _Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        abort_at: int | None,
    ) -> None:
        self.conn = conn
        self.reader = reader
        self.writer = writer
        self.abort_at = abort_at  # 1-based offset of the first byte not delivered
        self.items: collections.deque[tuple[float, Any]] = collections.deque()
        self.available = asyncio.Event()
        self.space = asyncio.Event()
        self.space.set()
        self.buffered = 0
        self.count = 0

    def _push(self, deadline: float, item: Any) -> None:
        self.items.append((deadline, item))
        if isinstance(item, bytes):
            self.buffered += len(item)
            if self.buffered > _MAX_BUFFERED:
                self.space.clear()
        self.available.set()

    async def read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        relay = self.conn.relay
        while True:
            await self.space.wait()
            try:
                data = await self.reader.read(_CHUNK)
            except (ConnectionError, OSError):
                # the peer reset: pass the reset on (not counted as an injected abort)
                self._push(loop.time() + relay.delay, _ABORT)
                return
            deadline = loop.time() + relay.delay
            if (
                relay.block_websocket
                and self is self.conn.up
                and b"upgrade: websocket" in (data.lower())
            ):
                self.conn.relay.blocked += 1
                self._push(deadline, _ABORT)
                return
            if not data:
                self._push(deadline, _ABORT if self.abort_at is not None else _EOF)
                return
            if (
                relay.per_read
                and self.abort_at is None
                and relay._rng.random() < relay.abort_rate / 2
            ):
                self.abort_at = self.count + relay._rng.randint(1, len(data))
            if self.abort_at is not None and self.count + len(data) >= self.abort_at:
                keep = self.abort_at - 1 - self.count
                if keep > 0:
                    self._push(deadline, data[:keep])
                self.count += max(keep, 0)
                self.conn.injected = True
                self._push(deadline, _ABORT)
                return
            self.count += len(data)
            self._push(deadline, data)

    async def write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.items:
                self.available.clear()
                await self.available.wait()
                continue
            deadline, item = self.items[0]
            wait = deadline - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.items.popleft()
            if item is _ABORT:
                self.conn.abort()
                return
            if item is _EOF:
                if self.writer.can_write_eof():
                    with contextlib.suppress(OSError, RuntimeError):
                        self.writer.write_eof()
                return
            self.buffered -= len(item)
            if self.buffered <= _MAX_BUFFERED:
                self.space.set()
            try:
                self.writer.write(item)
                await self.writer.drain()
            except (ConnectionError, OSError):
                self.conn.abort()
                return


class _Connection:
    def __init__(
        self,
        relay: Relay,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        abort_plan: tuple[str, int] | None,
    ) -> None:
        self.relay = relay
        self.client_writer = client[1]
        self.upstream_writer = upstream[1]
        self.injected = False
        self.closed = False
        self.finished = asyncio.Event()
        side, offset = abort_plan if abort_plan else ("", 0)
        self.up = _Direction(self, client[0], upstream[1], offset if side == "c2s" else None)
        self.down = _Direction(self, upstream[0], client[1], offset if side == "s2c" else None)

    def abort(self) -> None:
        """Close both sockets at once, with RST where the platform allows."""
        self.finished.set()
        if self.closed:
            return
        self.closed = True
        if self.injected:
            self.relay.aborted += 1
        for writer in (self.client_writer, self.upstream_writer):
            _set_rst_on_close(writer)
            writer.transport.abort()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client_writer, self.upstream_writer):
            writer.transport.close()

    async def run(self) -> None:
        tasks = [
            asyncio.ensure_future(coro)
            for coro in (
                self.up.read_loop(),
                self.up.write_loop(),
                self.down.read_loop(),
                self.down.write_loop(),
            )
        ]
        both_done: asyncio.Future[Any] = asyncio.gather(tasks[1], tasks[3])
        aborted: asyncio.Future[Any] = asyncio.ensure_future(self.finished.wait())
        try:
            # both directions delivered their EOF, or the connection was aborted
            await asyncio.wait({both_done, aborted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            aborted.cancel()
            both_done.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(BaseException):
                await both_done  # retrieve its CancelledError (else asyncio logs it)
            self.close()


class Relay:
    """A delaying, optionally connection-aborting TCP relay on 127.0.0.1 (see module doc)."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        delay: float = 0.0,
        abort_rate: float = 0.0,
        seed: int | None = None,
        abort_window: int = 4096,
        handshake: bool = False,
        per_read: bool = False,
        block_websocket: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if not 0.0 <= abort_rate <= 1.0:
            raise ValueError("abort_rate must be within [0, 1]")
        if abort_window < 1:
            raise ValueError("abort_window must be >= 1")
        self.target_host = target_host
        self.target_port = target_port
        self.delay = delay
        self.abort_rate = abort_rate
        self.abort_window = abort_window
        self.handshake = handshake
        self.per_read = per_read
        self.block_websocket = block_websocket
        self.blocked = 0
        self.host = host
        self.connections = 0
        self.aborted = 0
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __repr__(self) -> str:
        return (
            f"Relay({self.address} -> {self.target_host}:{self.target_port}, "
            f"delay={self.delay}, abort_rate={self.abort_rate})"
        )

    async def start(self) -> None:
        """Listen; returns once connections are accepted."""
        if self._server is not None:
            raise RuntimeError("relay already started")
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and abort every open connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self._conns):
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _abort_plan(self) -> tuple[str, int] | None:
        if self.abort_rate <= 0 or self._rng.random() >= self.abort_rate:
            return None
        side = self._rng.choice(("c2s", "s2c"))
        return side, self._rng.randint(1, self.abort_window)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        plan = self._abort_plan()
        try:
            if self.handshake and self.delay > 0:
                # what the client sends meanwhile waits in the socket buffer, then takes `delay`
                await asyncio.sleep(2 * self.delay)
            try:
                upstream = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                _set_rst_on_close(writer)
                writer.transport.abort()
                return
            for w in (writer, upstream[1]):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, (reader, writer), upstream, plan)
            self._conns.add(conn)
            try:
                await conn.run()
            finally:
                self._conns.discard(conn)
        except asyncio.CancelledError:
            writer.transport.abort()
        finally:
            self._tasks.discard(task)


class RelayThread:
    """A :class:`Relay` running its own event loop in a daemon thread, for synchronous code.

    ``start()`` returns once the relay listens; ``stop()`` closes the listener and every
    connection and joins the thread. Attributes of the relay (``port``, ``url``, ``address``,
    ``connections``, ``aborted``, ``delay``, ...) are readable here too; ``delay`` and
    ``abort_rate`` may be set.
    """

    def __init__(self, target_host: str, target_port: int, **options: Any) -> None:
        self.relay = Relay(target_host, target_port, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __getattr__(self, name: str) -> Any:
        # only reached for names RelayThread itself lacks
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.relay, name)

    @property
    def delay(self) -> float:
        return self.relay.delay

    @delay.setter
    def delay(self, value: float) -> None:
        self.relay.delay = value

    @property
    def abort_rate(self) -> float:
        return self.relay.abort_rate

    @abort_rate.setter
    def abort_rate(self, value: float) -> None:
        self.relay.abort_rate = value

    def start(self, timeout: float = 10.0) -> RelayThread:
        if self._thread is not None:
            raise RuntimeError("relay thread already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.relay.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"relay->{self.relay.target_port}")
        self._thread.daemon = True
        self._thread.start()
        if not started.wait(timeout):
            raise TimeoutError("relay did not start")
        if failure:
            self._thread.join(timeout)
            self._thread = None
            raise failure[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._thread = None
        if thread.is_alive() and not loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self.relay.stop(), loop)
            with contextlib.suppress(Exception):
                future.result(timeout)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    def __enter__(self) -> RelayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_relay(target_host: str, target_port: int, **options: Any) -> Iterator[RelayThread]:
    """``with running_relay(host, port, delay=0.01) as relay: ...`` (a :class:`RelayThread`)."""
    relay = RelayThread(target_host, target_port, **options).start()
    try:
        yield relay
    finally:
        relay.stop()


async def _serve_stdin(relay: Relay) -> None:
    """The process mode's control loop: commands on stdin, answers on stdout."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        words = line.split()
        try:
            if words[:1] == ["delay"] and len(words) == 2:
                relay.delay = max(0.0, float(words[1]))
                answer = "ok"
            elif words[:1] == ["abort_rate"] and len(words) == 2:
                relay.abort_rate = min(1.0, max(0.0, float(words[1])))
                answer = "ok"
            elif words == ["stats"]:
                answer = f"connections {relay.connections} aborted {relay.aborted}"
            elif not words:
                continue
            else:
                answer = f"error unknown command {line.strip()!r}"
        except ValueError as exc:
            answer = f"error {exc}"
        print(answer, flush=True)


async def _main_async(args: argparse.Namespace) -> None:
    relay = Relay(
        args.target_host,
        args.target_port,
        delay=args.delay,
        abort_rate=args.abort_rate,
        seed=args.seed,
        handshake=args.handshake,
    )
    await relay.start()
    print(f"listening {relay.port}", flush=True)
    try:
        await _serve_stdin(relay)
    finally:
        await relay.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A delaying TCP relay on 127.0.0.1.")
    parser.add_argument("target_host")
    parser.add_argument("target_port", type=int)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each way")
    parser.add_argument("--abort-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--handshake", action="store_true", help="a round trip per connection")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
