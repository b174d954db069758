"""RunLoopClient: narrow tests against tests/fakes.py, plus a few against the real server."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest

from remote_kernel import protocol as p
from remote_kernel.client import RunLoopClient, completion_options, negotiate_version
from remote_kernel.credentials import resolve_credentials, save_credentials
from remote_kernel.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidAPIParamsError,
    ServerError,
    SessionNotFoundError,
    TransportError,
)
from remote_kernel.proxy.transports import PollingTransport
from remote_kernel.runloop import RunState

from .fakes import FakeRunLoopServer, Step

pytestmark = pytest.mark.timeout(60)


def _client(srv: FakeRunLoopServer, **kw: object) -> RunLoopClient:
    return RunLoopClient(srv.endpoint, srv.access_key, srv.secret_key, **kw)  # type: ignore[arg-type]


def _run(client: RunLoopClient, session_id: str, code: str) -> tuple[RunState, PollingTransport]:
    """A run as the kernel makes it: the state machine over HTTP polling."""
    options = {"console": p.CONSOLE_JUPYTER} if client.has(p.FEATURE_JUPYTER_CONSOLE) else {}
    state = RunState(
        code, options, cursors=client.has(p.FEATURE_OUTPUT_CURSOR),
        idempotent=client.has(p.FEATURE_IDEMPOTENT_RUNS),
    )  # fmt: skip
    return state, PollingTransport(client, session_id)


async def _drain(run: tuple[RunState, PollingTransport]) -> list[list[object]]:
    """Drive the run to its end (prompts answered with ""); every record handed out."""
    state, transport = run
    records: list[list[object]] = []
    while True:
        update = await transport.next(state)
        records.extend(update.records)
        if update.new_prompt:
            await transport.answer(state, "")
        elif update.terminal:
            return records


# -- pure helpers ---------------------------------------------------------------------------------
def test_completion_options_rows_and_columns() -> None:
    opts = completion_options("import os\nos.pa(x)", 15)
    assert opts == {"cursor_pos": 15, "row": 1, "col": 5, "line": "os.pa", "post": "(x)"}


def test_negotiate_version_takes_the_older() -> None:
    assert negotiate_version("v8.20240915") == "v8.20240915"
    assert negotiate_version("v10.20300101") == p.API_VERSION
    assert negotiate_version("garbage") == p.API_VERSION


def test_resolve_credentials_env_wins_over_saved_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("REMOTE_KERNEL_CREDENTIALS", str(tmp_path / "credentials.json"))
    assert resolve_credentials(environ={}).access_key == ""
    save_credentials("http://file:1", "AKFILE", "sfile")
    creds = resolve_credentials(environ={})
    assert (creds.endpoint, creds.access_key, creds.secret_key) == (
        "http://file:1",
        "AKFILE",
        "sfile",
    )
    assert "sfile" not in repr(creds)
    env = {"BACKEND_ACCESS_KEY": "AKENV", "BACKEND_SECRET_KEY": "senv"}
    assert resolve_credentials(environ=env).access_key == "AKENV"


def test_bad_endpoint_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="BACKEND_ENDPOINT"):
        RunLoopClient("ftp://x", "", "")


# -- against the fake ----------------------------------------------------------------------
async def test_probe_signing_and_session_lifecycle() -> None:
    async with FakeRunLoopServer() as srv, _client(srv) as client:
        info = await client.probe()
        assert info.has(p.FEATURE_OUTPUT_CURSOR) and client.has(p.FEATURE_JUPYTER_CONSOLE)
        ref = await client.create_session("python:3", "sess-one", environ={"A": "1"})
        assert ref.created and ref.name == "sess-one"
        again = await client.create_session("python:3", "sess-one")
        assert again.id == ref.id and not again.created
        info_body = await client.session_info(ref.id)
        assert info_body["kernelInfo"]["language_info"]["name"] == "python"
        await client.interrupt(ref.id)
        await client.destroy_session(ref.id)
        with pytest.raises(SessionNotFoundError):
            await client.session_info(ref.id)
        # bodyless requests are signed with the content type they carry
        kinds = {(r["method"], r["content_type"]) for r in srv.requests}
        assert ("GET", "text/plain") in kinds and ("POST", "application/json") in kinds


async def test_wrong_secret_is_authentication_error_and_not_retried() -> None:
    async with FakeRunLoopServer() as srv:
        async with RunLoopClient(srv.endpoint, srv.access_key, "wrong-secret") as client:
            with pytest.raises(AuthenticationError):
                await client.create_session("python:3", "sess-x")
        assert len([r for r in srv.requests if r["path"] == "/session"]) == 1


async def test_problem_json_maps_to_exception_classes() -> None:
    async with FakeRunLoopServer() as srv, _client(srv) as client:
        srv.fail_next(
            "POST /session",
            400,
            {"type": "https://api.backend.ai/probs/invalid-api-params", "msg": "bad image"},
        )
        with pytest.raises(InvalidAPIParamsError, match="bad image"):
            await client.create_session("python:3", "sess-y")
        srv.fail_next("POST /session", 502, "<html>Bad Gateway</html>")
        with pytest.raises(ServerError) as info:
            await client.create_session("python:3", "sess-y")
        assert info.value.status == 502


async def test_transport_error_names_endpoint_and_fix_quickly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    async with RunLoopClient(endpoint, "", "", retries=2, backoff=0.05) as client:
        started = time.monotonic()
        with pytest.raises(TransportError) as info:
            await client.probe()
    message = str(info.value)
    assert endpoint in message and "connection refused" in message.lower()
    assert "remote-kernel serve" in message and "BACKEND_ENDPOINT" in message
    assert time.monotonic() - started < 5


async def test_cursor_retry_neither_loses_nor_repeats_output() -> None:
    async with FakeRunLoopServer() as srv, _client(srv, request_timeout=0.5) as client:
        await client.probe()
        ref = await client.create_session("python:3", "sess-cur")
        srv.script(
            "loop",
            [
                Step([[p.STDOUT, "a\n"]], p.CONTINUED),
                Step([[p.STDOUT, "b\n"]], p.CONTINUED),
                Step([[p.STDOUT, "c\n"]], p.FINISHED, reply={"status": "ok", "execution_count": 1}),
            ],
        )
        srv.stall_next("continue", 2.0)
        run = _run(client, ref.id, "loop")
        records = await _drain(run)
        assert records == [[p.STDOUT, "a\n"], [p.STDOUT, "b\n"], [p.STDOUT, "c\n"]]
        last = run[0].last
        assert last is not None and last.reply == {"status": "ok", "execution_count": 1}
        assert srv.modes().count("continue") == 3  # one lost response, replayed with its cursor
        query = next(r for r in srv.requests if r.get("mode") == "query")["body"]
        assert query["runId"] == query["run_id"] == run[0].run_id
        assert query["options"]["console"] == "jupyter"


async def test_lost_query_response_is_retried_as_the_same_run() -> None:
    async with FakeRunLoopServer() as srv, _client(srv, request_timeout=0.5) as client:
        await client.probe()
        ref = await client.create_session("python:3", "sess-q")
        srv.script("once", [Step([[p.STDOUT, "x\n"]], p.FINISHED)])
        srv.stall_next("query", 2.0)
        records = await _drain(_run(client, ref.id, "once"))
        assert records == [[p.STDOUT, "x\n"]]
        assert srv.executed_codes == ["once"]
        queries = [r["body"] for r in srv.requests if r.get("mode") == "query"]
        assert len(queries) == 2 and queries[0] == queries[1]  # same runId, same cursor 0
        assert srv.modes().count("continue") == 0  # never "recovered" as a continue


async def test_lost_query_on_a_base_layer_server_is_not_resent() -> None:
    features = [p.FEATURE_JUPYTER_CONSOLE, p.FEATURE_OUTPUT_CURSOR]
    async with (
        FakeRunLoopServer(features=features) as srv,
        _client(srv, request_timeout=0.5) as client,
    ):
        await client.probe()
        ref = await client.create_session("python:3", "sess-q2")
        srv.stall_next("query", 2.0)
        with pytest.raises(TransportError):
            await _drain(_run(client, ref.id, "once"))
        assert srv.modes() == ["query"]  # a second query could run the cell twice


async def test_retried_input_is_not_fed_twice() -> None:
    async with FakeRunLoopServer() as srv, _client(srv, request_timeout=0.5) as client:
        await client.probe()
        ref = await client.create_session("python:3", "sess-in")
        srv.script(
            "ask",
            [
                Step([], p.WAITING_INPUT, options={"is_password": False, "prompt": "? "}),
                Step([[p.STDOUT, "got it\n"]], p.FINISHED),
            ],
        )
        state, transport = _run(client, ref.id, "ask")
        first = await transport.next(state)
        assert first.new_prompt and first.result.options["prompt"] == "? "
        srv.stall_next("input", 2.0)
        await transport.answer(state, "Alice")
        final = await transport.next(state)
        assert final.records == [[p.STDOUT, "got it\n"]] and final.terminal
        assert srv.runs[state.run_id].inputs == ["Alice"]
        inputs = [r["body"] for r in srv.requests if r.get("mode") == "input"]
        assert len(inputs) == 2 and {b["options"]["input_seq"] for b in inputs} == {1}


async def test_base_layer_server_gets_no_extension_fields() -> None:
    async with FakeRunLoopServer(features=[]) as srv, _client(srv) as client:
        info = await client.probe()
        assert not info.features
        ref = await client.create_session("python:3", "sess-base")
        srv.script(
            "b",
            [Step([[p.STDOUT, "1"]], p.CONTINUED), Step([[p.STDERR, "E"]], p.FINISHED, 1)],
        )
        run = _run(client, ref.id, "b")
        records = await _drain(run)
        assert records == [[p.STDOUT, "1"], [p.STDERR, "E"]]
        assert run[0].last is not None and run[0].last.exit_code == 1
        bodies = [r["body"] for r in srv.requests if "body" in r and "mode" in r]
        assert all("cursor" not in b and b["options"] == {} for b in bodies)
        assert await client.inspect(ref.id, "x", 1) is None
        assert await client.is_complete(ref.id, "x") is None
        completion = await client.complete(ref.id, "pr", 2)
        assert completion["suggestions"] == ["print"]


async def test_anonymous_requests_are_unsigned() -> None:
    async with (
        FakeRunLoopServer(anonymous=True) as srv,
        RunLoopClient(srv.endpoint, "", "") as client,
    ):
        assert client.anonymous
        await client.create_session("python:3", "sess-anon")


# -- against the real server --------------------------------------------------------------
async def test_real_server_run_with_extensions(server: object) -> None:
    srv = server
    async with RunLoopClient(srv.endpoint, srv.access_key, srv.secret_key) as client:  # type: ignore[attr-defined]
        info = await client.probe()
        assert info.has(p.FEATURE_JUPYTER_CONSOLE)
        ref = await client.create_session("python:3", f"client-test-{os.getpid()}")
        try:
            records = await _drain(_run(client, ref.id, "print('hi')\n1+1"))
            kinds = [r[0] for r in records]
            assert [p.STDOUT, "hi\n"] in records and p.EXECUTE_RESULT in kinds
        finally:
            await client.destroy_session(ref.id)


async def test_real_base_server_run_and_errors(base_server: object) -> None:
    async with RunLoopClient(
        base_server.endpoint,  # type: ignore[attr-defined]
        base_server.access_key,  # type: ignore[attr-defined]
        base_server.secret_key,  # type: ignore[attr-defined]
    ) as client:
        info = await client.probe()
        assert not info.features
        ref = await client.create_session("python:3", f"client-base-{os.getpid()}")
        try:
            run = _run(client, ref.id, "print('hi')\nundefined_name")
            records = await _drain(run)
            assert run[0].last is not None and run[0].last.exit_code == 1
            assert records[0] == [p.STDOUT, "hi\n"]
            assert any(r[0] == p.STDERR and "NameError" in r[1] for r in records)
        finally:
            await client.destroy_session(ref.id)
        with pytest.raises(SessionNotFoundError):
            await client.session_info(ref.id)
        await asyncio.sleep(0)
