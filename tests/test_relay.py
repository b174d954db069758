"""The loopback relay of :mod:`tests.relay`: real sockets, a tiny asyncio echo server as target."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .relay import Relay, RelayThread, running_relay


class EchoServer:
    """An asyncio echo server on 127.0.0.1 in a daemon thread; echoes until the client's EOF."""

    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="echo", daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    def start(self) -> EchoServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer().start()
    yield server
    server.stop()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def exchange(port: int, payload: bytes, piece: int = 0) -> bytes:
    """Send ``payload`` (while reading, so neither side blocks), half-close, read to EOF.

    ``piece``: send in writes of this many bytes (0: one ``sendall``)."""
    sock = connect(port)
    received: list[bytes] = []

    def reader() -> None:
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received.append(chunk)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    step = piece or len(payload) or 1
    for start in range(0, len(payload), step):
        sock.sendall(payload[start : start + step])
    sock.shutdown(socket.SHUT_WR)
    thread.join(20)
    sock.close()
    return b"".join(received)


@pytest.mark.timeout(30)
def test_bytes_pass_unchanged_both_ways(echo: EchoServer) -> None:
    payload = os.urandom(1024 * 1024)
    with running_relay("127.0.0.1", echo.port) as relay:
        assert relay.url == f"http://127.0.0.1:{relay.port}"
        assert relay.address == f"127.0.0.1:{relay.port}"
        assert exchange(relay.port, payload) == payload
        assert relay.connections == 1
        assert relay.aborted == 0


@pytest.mark.timeout(30)
def test_delay_applies_each_way(echo: EchoServer) -> None:
    with running_relay("127.0.0.1", echo.port, delay=0.05) as relay:
        sock = connect(relay.port)
        try:
            for message in (b"ping", b"pong" * 1000):  # a keep-alive style second exchange too
                t0 = time.perf_counter()
                sock.sendall(message)
                assert recv_exactly(sock, len(message)) == message
                elapsed = time.perf_counter() - t0
                assert 0.1 <= elapsed < 0.3, elapsed
        finally:
            sock.close()


@pytest.mark.timeout(30)
def test_handshake_costs_one_round_trip_per_connection(echo: EchoServer) -> None:
    with running_relay("127.0.0.1", echo.port, delay=0.05, handshake=True) as relay:
        sock = connect(relay.port)
        try:
            timings = []
            for _ in range(2):
                t0 = time.perf_counter()
                sock.sendall(b"ping")
                assert recv_exactly(sock, 4) == b"ping"
                timings.append(time.perf_counter() - t0)
        finally:
            sock.close()
        assert 0.2 <= timings[0] < 0.4, timings  # handshake + request + response
        assert 0.1 <= timings[1] < 0.3, timings  # the same connection again: no handshake


@pytest.mark.timeout(30)
def test_delay_does_not_cap_throughput(echo: EchoServer) -> None:
    # 4 MB in 1024 writes of 4 KB: sleeping 50 ms per chunk would take far longer than 3 s
    payload = os.urandom(4 * 1024 * 1024)
    with running_relay("127.0.0.1", echo.port, delay=0.05) as relay:
        t0 = time.perf_counter()
        assert exchange(relay.port, payload, piece=4096) == payload
        assert time.perf_counter() - t0 < 3.0


@pytest.mark.timeout(30)
def test_abort_rate_one_aborts_every_connection(echo: EchoServer) -> None:
    with running_relay("127.0.0.1", echo.port, abort_rate=1.0, seed=1) as relay:
        for _ in range(10):
            payload = os.urandom(16384)  # more than the abort window in both directions
            got = b""
            sock = connect(relay.port)
            try:
                with contextlib.suppress(OSError):
                    sock.sendall(payload)
                with contextlib.suppress(OSError):  # reset, or EOF
                    while chunk := sock.recv(65536):
                        got += chunk
            finally:
                sock.close()
            assert len(got) < len(payload)
            assert payload.startswith(got)
        deadline = time.monotonic() + 5
        while relay.aborted < relay.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert relay.connections == 10
        assert relay.aborted == relay.connections


@pytest.mark.timeout(30)
def test_abort_sends_reset(echo: EchoServer) -> None:
    with running_relay("127.0.0.1", echo.port, abort_rate=1.0, seed=2) as relay:
        sock = connect(relay.port)
        try:
            with contextlib.suppress(OSError):
                sock.sendall(b"x" * 16384)
            time.sleep(0.2)
            with pytest.raises(ConnectionResetError):
                while sock.recv(65536):
                    pass
        finally:
            sock.close()
        assert relay.aborted == 1


@pytest.mark.timeout(30)
def test_abort_rate_zero_aborts_nothing(echo: EchoServer) -> None:
    with running_relay("127.0.0.1", echo.port, abort_rate=0.0, seed=3) as relay:
        for _ in range(10):
            payload = os.urandom(16384)
            assert exchange(relay.port, payload) == payload
        assert relay.connections == 10
        assert relay.aborted == 0


@pytest.mark.timeout(30)
def test_aborts_hit_both_directions_reproducibly() -> None:
    relay_a = Relay("127.0.0.1", 1, abort_rate=0.5, seed=7)
    relay_b = Relay("127.0.0.1", 1, abort_rate=0.5, seed=7)
    plans = [relay_a._abort_plan() for _ in range(400)]
    assert plans == [relay_b._abort_plan() for _ in range(400)]
    chosen = [plan for plan in plans if plan is not None]
    assert 120 < len(chosen) < 280
    assert {side for side, _ in chosen} == {"c2s", "s2c"}
    assert all(1 <= offset <= 4096 for _, offset in chosen)


@pytest.mark.timeout(30)
def test_stop_closes_listener_and_ends_thread(echo: EchoServer) -> None:
    relay = RelayThread("127.0.0.1", echo.port).start()
    port = relay.port
    open_sock = connect(port)  # an open connection must not keep stop() waiting
    open_sock.sendall(b"hello")
    assert recv_exactly(open_sock, 5) == b"hello"
    thread = relay._thread
    assert thread is not None
    relay.stop()
    assert not thread.is_alive()
    with pytest.raises(OSError):
        connect(port).close()
    with contextlib.suppress(OSError):
        assert open_sock.recv(10) == b""  # closed (EOF or reset)
    open_sock.close()


@pytest.mark.timeout(30)
async def test_usable_inside_a_running_loop(echo: EchoServer) -> None:
    async with Relay("127.0.0.1", echo.port, delay=0.01) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"abc")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(3), 5) == b"abc"
        writer.close()
        await writer.wait_closed()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", relay.port)
