"""Malformed input never gets a 500 or wedges a kernel (issue "A server people can share", 4).

The aiohttp app runs in process (pytest-aiohttp's ``aiohttp_client``) with real kernels. Each
malformed request of the fuzz report is in :data:`CASES` with the exact status and problem
``type`` it must get; afterwards the same session still runs a cell and its files are intact.
The ``input`` answers are checked on all three ways of sending one: HTTP, the push channel and
the SDK WebSocket.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from remote_kernel import frames
from remote_kernel import protocol as p
from remote_kernel.auth import Keypair, sign_headers
from remote_kernel.server.app import make_app
from remote_kernel.server.keystore import KeyStore
from remote_kernel.server.sessions import SessionManager
from remote_kernel.server.settings import ServerSettings

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::aiohttp.multipart.BadContentDispositionHeader"),
]

PROBS = "https://api.backend.ai/probs/"
BAD = "invalid-api-params"
JSON = {"Content-Type": "application/json"}
LONG = "a" * 300  # one path component over NAME_MAX (255 bytes)
ASK = "x = input('name? ')\nprint('hello', x)\n"


@pytest.fixture
async def sid(app_client: Any) -> str:
    resp = await app_client.post("/session", json={"image": "python:3", "name": "harden-1"})
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["sessionId"])


# -- the table ----------------------------------------------------------------------------------
def multipart(*parts: bytes, boundary: bytes = b"XyZ", close: bool = True) -> bytes:
    """A multipart body from raw part bytes (headers, blank line, content), built by hand."""
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (b"--" + boundary + b"--\r\n" if close else b"")


def file_part(filename: bytes, content: bytes = b"data") -> bytes:
    return (
        b'Content-Disposition: form-data; name="src"; filename="' + filename + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + content
    )


def form(boundary: str = "XyZ") -> dict[str, str]:
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@dataclass
class Case:
    name: str
    method: str
    path: str  # "{s}" is the session's path, /session/<id>
    data: bytes | None = None
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    status: int = 400
    kind: str = BAD


def deep(n: int = 100_000) -> bytes:
    return b"[" * n + b"]" * n


# fmt: off
CASES = [
    # lone surrogates in code, text and paths
    Case("complete code", "POST", "{s}/complete", rb'{"code": "\ud800"}'),
    Case("inspect code", "POST", "{s}/inspect", rb'{"code": "x\ud800", "cursor_pos": 1}'),
    Case("is-complete code", "POST", "{s}/is-complete", rb'{"code": "\udfff"}'),
    Case("execute code", "POST", "{s}", rb'{"mode": "query", "runId": "s1", "code": "\ud800"}'),
    Case("execute complete", "POST", "{s}", rb'{"mode": "complete", "code": "\ud800"}'),
    Case("execute options", "POST", "{s}",
         rb'{"mode": "query", "code": "1", "options": {"\ud800": 1}}'),
    Case("download files", "POST", "{s}/download", rb'{"files": ["\ud800"]}'),
    Case("list_files path", "GET", "{s}/files", rb'{"path": "\udc80"}'),
    Case("upload surrogate-escaped filename", "POST", "{s}/upload",
         multipart(file_part(b"\xed\xa0\x80.txt")), form()),
    Case("upload undecodable filename", "POST", "{s}/upload",
         multipart(file_part(b"\xff\xfe.txt")), form()),
    # deeply nested JSON
    Case("nested list body", "POST", "{s}/complete", deep()),
    Case("nested object body", "POST", "{s}", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    Case("nested create body", "POST", "/session", deep()),
    Case("nested download body", "POST", "{s}/download", deep()),
    # broken multipart bodies
    Case("multipart truncated", "POST", "{s}/upload",
         multipart(file_part(b"cut.txt", b"half of it"), close=False), form()),
    Case("multipart truncated in headers", "POST", "{s}/upload",
         b'--XyZ\r\nContent-Disposition: form-data; name="src"; filen', form()),
    Case("multipart bad boundary", "POST", "{s}/upload",
         multipart(file_part(b"b.txt"), boundary=b"Other"), form()),
    Case("multipart no boundary", "POST", "{s}/upload",
         multipart(file_part(b"b.txt")), {"Content-Type": "multipart/form-data"}),
    Case("multipart no Content-Disposition", "POST", "{s}/upload",
         multipart(b"Content-Type: text/plain\r\n\r\nno name"), form()),
    Case("multipart empty body", "POST", "{s}/upload", b"", form()),
    # config.environ on create
    Case("environ NUL in value", "POST", "/session",
         rb'{"image": "python:3", "name": "env-1", "config": {"environ": {"A": "x\u0000y"}}}'),
    Case("environ NUL in key", "POST", "/session",
         rb'{"image": "python:3", "name": "env-2", "config": {"environ": {"A\u0000": "x"}}}'),
    Case("environ '=' in key", "POST", "/session",
         rb'{"image": "python:3", "name": "env-3", "config": {"environ": {"A=B": "x"}}}'),
    Case("environ empty key", "POST", "/session",
         rb'{"image": "python:3", "name": "env-4", "config": {"environ": {"": "x"}}}'),
    Case("environ int value", "POST", "/session",
         rb'{"image": "python:3", "name": "env-5", "config": {"environ": {"A": 1}}}'),
    Case("environ null value", "POST", "/session",
         rb'{"image": "python:3", "name": "env-6", "config": {"environ": {"A": null}}}'),
    Case("environ a list", "POST", "/session",
         rb'{"image": "python:3", "name": "env-7", "config": {"environ": ["A=1"]}}'),
    Case("environ surrogate", "POST", "/session",
         rb'{"image": "python:3", "name": "env-8", "config": {"environ": {"A": "\ud800"}}}'),
    # over-long names
    Case("upload long name", "POST", "{s}/upload", multipart(file_part(LONG.encode())), form()),
    Case("upload long dir", "POST", "{s}/upload",
         multipart(file_part(LONG.encode() + b"/x.txt")), form()),
    Case("download long name (query)", "GET", f"{{s}}/download?files={LONG}"),
    Case("download long name (body)", "POST", "{s}/download",
         json.dumps({"files": [LONG]}).encode()),
    Case("list long path (query)", "GET", f"{{s}}/files?path={LONG}"),
    Case("list long path (body)", "GET", "{s}/files", json.dumps({"path": LONG}).encode()),
    Case("list very long path", "GET", "{s}/files?path=" + "/".join(["b" * 200] * 30)),
    # NUL in paths
    Case("list NUL path", "GET", "{s}/files?path=a%00b"),
    Case("upload NUL name", "POST", "{s}/upload", multipart(file_part(b"a%00b")), form()),
    # found by tests/test_openapi.py and its probes: each was a 500
    Case("body not in its Content-Encoding", "POST", "{s}", b"not gzip",
         {**JSON, "Content-Encoding": "gzip"}),
    Case("upload not in its Content-Encoding", "POST", "{s}/upload",
         multipart(file_part(b"d.txt")), {**form(), "Content-Encoding": "deflate"}),
    # a run that failed as it started ("The server could not run this cell/batch") until checked
    Case("batch step not a command", "POST", "{s}",
         b'{"mode": "batch", "options": {"build": {"make": 1}}}'),
    Case("user_expressions not an object", "POST", "{s}", json.dumps(
        {"mode": "query", "code": "1", "options": {"console": "jupyter", "user_expressions": "x"}}
    ).encode()),
]
# fmt: on


async def send(client: Any, case: Case, sid: str) -> aiohttp.ClientResponse:
    path = case.path.replace("{s}", f"/session/{sid}")
    resp: aiohttp.ClientResponse = await client.request(
        case.method, path, data=case.data, headers=case.headers
    )
    return resp


async def check_problem(resp: aiohttp.ClientResponse, status: int, kind: str) -> str | None:
    """None when ``resp`` is the problem+json answer expected, else what is wrong."""
    text = await resp.text()
    got = f"{resp.status} {resp.content_type} {text[:300]}"
    if resp.status != status or resp.content_type != "application/problem+json":
        return got
    body = json.loads(text)
    if body.get("type") != PROBS + kind or not body.get("title") or not body.get("msg"):
        return got
    return None


async def test_every_malformed_request_is_a_4xx_problem(app_client: Any, sid: str) -> None:
    s = f"/session/{sid}"
    keep = multipart(file_part(b"keep.txt", b"precious\n"))
    assert (await app_client.post(f"{s}/upload", data=keep, headers=form())).status == 204

    wrong = {}
    for case in CASES:
        try:
            resp = await asyncio.wait_for(send(app_client, case, sid), 10)
        except asyncio.TimeoutError:
            wrong[case.name] = "no answer in 10 s"
            continue
        problem = await check_problem(resp, case.status, case.kind)
        if problem is not None:
            wrong[case.name] = problem
    assert not wrong, "\n".join(f"{name}: {got}" for name, got in wrong.items())

    # nothing was created, nothing was lost, and the kernel still runs a cell
    sessions = (await (await app_client.get("/session")).json())["items"]
    assert [s["sessionId"] for s in sessions] == [sid]
    listing = await (await app_client.get(f"{s}/files?path=.")).json()
    assert [e["filename"] for e in json.loads(listing["files"])] == ["keep.txt"]
    resp = await app_client.get(f"{s}/download?files=keep.txt")
    assert resp.status == 200
    reader = aiohttp.MultipartReader.from_response(resp)
    part = await reader.next()
    assert isinstance(part, aiohttp.BodyPartReader)
    with tarfile.open(fileobj=io.BytesIO(await part.read())) as tar:
        member = tar.extractfile("keep.txt")
        assert member is not None and member.read() == b"precious\n"
    body = {"mode": "query", "runId": "after", "code": "print(open('keep.txt').read().strip())"}
    result = await run_to_end(app_client, sid, body)
    assert result["console"] == [["stdout", "precious\n"]]
    assert result["exitCode"] == 0

    # what is valid still works: a surrogate pair, UTF-8 and percent-encoded UTF-8 file names
    raw = rb'{"mode": "query", "runId": "pair", "code": "print(\"\ud83d\ude00\")"}'
    resp = await app_client.post(s, data=raw, headers=JSON)
    assert resp.status == 200, await resp.text()
    first = (await resp.json())["result"]["console"]
    result = await run_to_end(app_client, sid, {"mode": "continue", "runId": "pair"})
    assert p.merge_console(first + result["console"]) == [["stdout", "\U0001f600\n"]]
    names = multipart(file_part("日本.txt".encode()), file_part(b"%C3%A9t%C3%A9.txt"))
    assert (await app_client.post(f"{s}/upload", data=names, headers=form())).status == 204
    listing = await (await app_client.get(f"{s}/files?path=.")).json()
    assert sorted(e["filename"] for e in json.loads(listing["files"])) == [
        "keep.txt", "été.txt", "日本.txt"]  # fmt: skip


async def test_mount_destinations_a_file_system_cannot_take(app_client: Any) -> None:
    """With folders that exist, these got as far as linking them into the work dir: a 500,
    or (outer first) a link made inside the outer folder. Now 400, and nothing starts."""
    for name in ("d", "e"):
        assert (await app_client.post("/folders", json={"name": name})).status == 201
    wrong = {}
    for what, mount_map in [
        ("NUL", {"d": "a\x00b"}),
        ("name over NAME_MAX", {"d": LONG}),
        ("nested, inner first", {"d": "x/y", "e": "/home/work/x"}),
        ("nested, outer first", {"d": "x", "e": "x/y"}),
    ]:
        body = {"image": "python:3", "name": "mnt-1", "config": {"mount_map": mount_map}}
        resp = await app_client.post("/session", json=body)
        problem = await check_problem(resp, 400, BAD)
        if problem is not None:
            wrong[what] = problem
    assert not wrong, wrong
    assert (await (await app_client.get("/session")).json())["items"] == []


async def run_to_end(client: Any, sid: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST the run and ``continue`` it until it is terminal; the merged console."""
    console: list[Any] = []
    for _ in range(60):
        resp = await client.post(f"/session/{sid}", json=body)
        assert resp.status == 200, await resp.text()
        result = (await resp.json())["result"]
        console = p.merge_console([*console, *result["console"]])
        if result["status"] not in p.NON_TERMINAL:
            return {**result, "console": console}
        assert result["status"] != p.WAITING_INPUT, result
        body = {"mode": "continue", "runId": body["runId"]}
    raise AssertionError("the run did not finish")


# -- input answers --------------------------------------------------------------------------------
async def wait_for_prompt(client: Any, sid: str, run_id: str) -> list[Any]:
    body: dict[str, Any] = {"mode": "query", "runId": run_id, "code": ASK}
    console: list[Any] = []
    for _ in range(60):
        resp = await client.post(f"/session/{sid}", json=body)
        result = (await resp.json())["result"]
        console += result["console"]
        if result["status"] == p.WAITING_INPUT:
            return console
        assert result["status"] == p.CONTINUED, result
        body = {"mode": "continue", "runId": run_id}
    raise AssertionError("no prompt")


async def test_bad_input_answer_over_http_is_400_and_the_kernel_still_waits(
    app_client: Any, sid: str
) -> None:
    prompt = await wait_for_prompt(app_client, sid, "ask-1")
    assert p.merge_console(prompt) == [["stdout", "name? "]]
    for raw in (rb'{"mode": "input", "runId": "ask-1", "code": "\ud800"}',
                rb'{"mode": "input", "runId": "ask-1", "code": "ok\udc80"}'):  # fmt: skip
        resp = await app_client.post(f"/session/{sid}", data=raw, headers=JSON)
        assert await check_problem(resp, 400, BAD) is None
        assert "surrogate" in (await resp.json())["msg"]
    result = await run_to_end(app_client, sid, {"mode": "input", "runId": "ask-1", "code": "bob"})
    assert result["console"] == [["stdout", "hello bob\n"]]
    assert result["exitCode"] == 0


async def test_bad_frames_on_the_push_channel_are_error_frames(app_client: Any, sid: str) -> None:
    ws = await app_client.ws_connect(f"/stream/session/{sid}/channel")

    async def recv() -> dict[str, Any]:
        msg = await ws.receive(timeout=20)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        return json.loads(msg.data)  # type: ignore[no-any-return]

    assert (await recv())["type"] == "hello"
    bad_frames = [
        '{"type": "run", "runId": "bad-code", "code": "\\ud800", "options": {}, "cursor": 0}',
        "[" * 100_000 + "]" * 100_000,
    ]
    for raw in bad_frames:
        await ws.send_str(raw)
        frame = await recv()
        assert frame["type"] == "error", frame
        assert (frame["problem"]["status"], frame["problem"]["type"]) == (400, PROBS + BAD)

    await ws.send_str(json.dumps(frames.run("ask-2", ASK, {"console": "jupyter"}, 0)))
    while (frame := await recv())["status"] != p.WAITING_INPUT:
        assert frame["type"] == "result"
    assert frame["options"]["input_seq"] == 1
    await ws.send_str('{"type": "input", "runId": "ask-2", "seq": 1, "text": "\\ud800"}')
    frame = await recv()
    assert frame["type"] == "error" and frame["runId"] == "ask-2", frame
    assert (frame["problem"]["status"], frame["problem"]["type"]) == (400, PROBS + BAD)
    assert "surrogate" in frame["problem"]["msg"]

    await ws.send_str(json.dumps(frames.input_("ask-2", 1, "ann")))
    got = []
    while (frame := await recv()).get("status") != p.FINISHED:
        got.append(frame)
    got.append(frame)
    assert got[0] == {"type": "accepted", "of": "input", "runId": "ask-2", "applied": True,
                      "seq": 1}  # fmt: skip
    out = "".join(r[1] for f in got if f["type"] == "result" for r in f["console"]
                  if r[0] == "stdout")  # fmt: skip
    assert out == "hello ann\n"
    await ws.close()


async def sdk_frames(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """Frames of the SDK's execute WebSocket up to the next prompt, the end or the close."""
    got: list[dict[str, Any]] = []
    while True:
        msg = await ws.receive(timeout=20)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return got
        got.append(json.loads(msg.data))
        if got[-1]["status"] in (p.WAITING_INPUT, p.FINISHED, "error"):
            return got


async def test_sdk_websocket_refuses_bad_code_and_survives_bad_input(
    app_client: Any, sid: str
) -> None:
    path = f"/stream/session/{sid}/execute"
    for first, error in [('{"mode": "query", "code": "print(1)\\ud800"}', "lone surrogate"),
                         ("[" * 100_000 + "]" * 100_000, "nested too deeply")]:  # fmt: skip
        ws = await app_client.ws_connect(path)
        await ws.send_str(first)
        got = await sdk_frames(ws)
        assert got[-1]["status"] == "error" and error in got[-1]["msg"], got
        await ws.close()

    # A text frame that is not UTF-8 (a CESU-8 lone surrogate) is a protocol error: aiohttp
    # closes the socket (1007) and the server interrupts the run, so the kernel is free again.
    ws = await app_client.ws_connect(path)
    await ws.send_str(json.dumps({"mode": "query", "code": ASK}))
    assert (await sdk_frames(ws))[-1]["status"] == p.WAITING_INPUT
    await ws.send_frame(b"\xed\xa0\x80", aiohttp.WSMsgType.TEXT)
    msg = await ws.receive(timeout=20)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    await ws.close()

    ws = await app_client.ws_connect(path)
    await ws.send_str(json.dumps({"mode": "query", "code": ASK}))
    assert (await sdk_frames(ws))[-1]["status"] == p.WAITING_INPUT
    await ws.send_str("eve")
    got = await sdk_frames(ws)
    assert got[-1]["status"] == p.FINISHED, got
    out = "".join(r[1] for f in got for r in f["console"] if r[0] == "stdout")
    assert out == "hello eve\n"
    await ws.close()

    # the PTY ignores malformed frames and keeps answering
    ws = await app_client.ws_connect(f"/stream/session/{sid}/pty")
    for bad in ["[" * 100_000 + "]" * 100_000, '{"type": "stdin", "chars": "\\ud800"}',
                '{"type": "stdin", "chars": "not base64!"}',
                '{"type": "resize", "rows": -1, "cols": 1e999}']:  # fmt: skip
        await ws.send_str(bad)
    await ws.send_str('{"type": "ping"}')
    while (msg := await ws.receive(timeout=20)).type == aiohttp.WSMsgType.TEXT:
        if json.loads(msg.data)["type"] == "pong":
            break
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    await ws.close()


# -- authentication -------------------------------------------------------------------------------
async def test_unknown_key_and_bad_signature_get_the_same_401(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    store = KeyStore(tmp_path / "state")
    pair = store.create()
    manager = SessionManager(tmp_path / "state")
    app = make_app(manager, store, ServerSettings(auth_required=True))
    client = await aiohttp_client(app)

    async def get(keypair: Keypair) -> tuple[int, str, bytes]:
        host = f"{client.host}:{client.port}"
        headers = sign_headers(keypair, method="GET", path_qs="/session", host=host,
                               content_type="", version=p.API_VERSION)  # fmt: skip
        resp = await client.get("/session", headers=headers)
        return resp.status, resp.content_type, await resp.read()

    status, _, _ = await get(pair)
    assert status == 200
    unknown = await get(Keypair("AKIA" + "0" * 16, pair.secret_key))
    bad_sig = await get(Keypair(pair.access_key, "x" * 40))
    assert unknown == bad_sig
    status, ctype, raw = unknown
    assert (status, ctype) == (401, "application/problem+json")
    assert json.loads(raw)["type"] == PROBS + "auth-failed"

    # malformed credentials are 4xx too: a signature that is not ASCII, a digest HMAC refuses
    good = sign_headers(pair, method="GET", path_qs="/session", host=f"{client.host}:{client.port}",
                        content_type="", version=p.API_VERSION)  # fmt: skip
    for authorization, status, kind in [
        (f"BackendAI signMethod=HMAC-SHA256, credential={pair.access_key}:sig\u00e9", 401,
         "auth-failed"),
        (f"BackendAI signMethod=HMAC-SHAKE_128, credential={pair.access_key}:00", 400,
         "invalid-auth-params"),
    ]:  # fmt: skip
        resp = await client.get("/session", headers={**good, "Authorization": authorization})
        assert await check_problem(resp, status, kind) is None, authorization
    await client.close()
