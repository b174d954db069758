"""The compute-session server over HTTP, against a real ``remote-kernel serve`` and real kernels."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from remote_kernel.protocol import merge_console, strip_ansi

from .conftest import ServerProcess
from .rawapi import RawAPI

pytestmark = pytest.mark.timeout(120)


def rid() -> str:
    return uuid.uuid4().hex


# -- version probe and errors -----
async def test_version_probe_lists_extensions(api: RawAPI) -> None:
    status, body = await api.call("GET", "/", sign=False)
    assert status == 200
    assert body["version"] == "v9.20250722"
    assert body["remote_kernel"]["features"] == [
        "jupyter-console", "output-cursor", "kernel-info", "inspect", "is-complete",
        "idempotent-runs", "push-channel", "comms", "leases",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("GET", "/no/such/route", 404, "object-not-found"),
        ("PUT", "/session", 405, "method-not-allowed"),
        ("GET", "/session/does-not-exist", 404, "object-not-found"),
    ],
)
async def test_errors_are_problem_json(
    api: RawAPI, method: str, path: str, status: int, kind: str
) -> None:
    got, body = await api.call(method, path)
    assert got == status
    assert api.last_content_type == "application/problem+json"
    assert body["type"] == f"https://api.backend.ai/probs/{kind}"
    assert body["title"] and body["msg"]
    assert "Traceback" not in str(body)


async def test_malformed_json_is_400_problem(api: RawAPI, sid: str) -> None:
    status, body = await api.call("POST", f"/session/{sid}", raw=b'{"mode": "query", "code": ')
    assert status == 400
    assert api.last_content_type == "application/problem+json"
    assert body["type"].endswith("/invalid-api-params")
    assert body["msg"].startswith("Malformed JSON body")


async def test_bad_mode_and_missing_run_id(api: RawAPI, sid: str) -> None:
    status, body = await api.call("POST", f"/session/{sid}", {"mode": "dance", "code": ""})
    assert (status, body["type"].rsplit("/", 1)[1]) == (400, "invalid-api-params")
    status, body = await api.call("POST", f"/session/{sid}", {"mode": "continue", "code": ""})
    assert status == 400 and "runId" in body["msg"]


async def test_clock_skew_is_400(api: RawAPI) -> None:
    skewed = datetime.now(timezone.utc) - timedelta(minutes=20)
    status, body = await api.call("GET", "/session", now=skewed)
    assert status == 400
    assert body["type"].endswith("/invalid-auth-params")
    assert body["msg"] == "Date/time sync error"


async def test_wrong_secret_and_unsigned_are_401(server: ServerProcess) -> None:
    async with RawAPI(server.endpoint, server.access_key, "not-the-secret") as bad:
        status, body = await bad.call("GET", "/session")
        assert status == 401 and body["msg"] == "HMAC signature mismatch"
        status, body = await bad.call("GET", "/session", sign=False)
        assert status == 401 and body["type"].endswith("/auth-failed")


async def test_unknown_image_is_404_naming_available_images(api: RawAPI) -> None:
    status, body = await api.call("POST", "/session", {"image": "cobol:85", "name": "t-cobol"})
    assert status == 404
    assert body["type"].endswith("/object-not-found")
    assert "cobol:85" in body["msg"]
    assert "python (any tag)" in body["msg"]
    assert "python (any tag)" in body["data"]["available"]


async def test_other_keypair_gets_404(server: ServerProcess, api: RawAPI, sid: str) -> None:
    access, secret = server.extra_keys[0]
    async with RawAPI(server.endpoint, access, secret) as other:
        for method, path in [("GET", f"/session/{sid}"), ("DELETE", f"/session/{sid}"),
                             ("POST", f"/session/{sid}/interrupt")]:  # fmt: skip
            status, body = await other.call(method, path)
            assert status == 404, (method, path, body)
        status, body = await other.call("POST", f"/session/{sid}", {"mode": "query", "code": "1"})
        assert status == 404
    status, _ = await api.call("GET", f"/session/{sid}")
    assert status == 200


# -- sessions -----
async def test_reuse_by_name_and_image_conflict(api: RawAPI) -> None:
    name = f"t-reuse-{uuid.uuid4().hex[:6]}"
    first = await api.create(name)
    try:
        status, body = await api.call(
            "POST", "/session", {"image": "python:3.11", "name": name, "reuseIfExists": True}
        )
        assert status == 201 and body["sessionId"] == first and body["created"] is False
        status, body = await api.call("POST", "/session", {"image": "python3", "name": name})
        assert status == 400 and body["type"].endswith("/session-already-exists")
        assert body["data"]["existingSessionId"] == first
    finally:
        await api.destroy(first)


async def test_invalid_name_is_400(api: RawAPI) -> None:
    status, body = await api.call("POST", "/session", {"image": "python", "name": "a b"})
    assert status == 400 and "Invalid session name" in body["msg"]


async def test_info_has_kernel_info_and_destroy_then_404(api: RawAPI) -> None:
    status, made = await api.call(
        "POST", "/session", {"image": "python", "name": f"t-info-{uuid.uuid4().hex[:6]}"}
    )
    assert status == 201
    sid = made["sessionId"]
    assert made["kernelInfo"]["language_info"]["name"] == "python"  # saves a round trip
    status, info = await api.call("GET", f"/session/{sid}")
    assert info["kernelInfo"] == made["kernelInfo"]
    assert status == 200
    assert info["status"] == "RUNNING" and info["sessionId"] == sid
    assert info["kernelInfo"]["language_info"]["name"] == "python"
    status, body = await api.call("DELETE", f"/session/{sid}")
    assert (status, body) == (200, {"stats": {"status": "terminated"}})
    status, _ = await api.call("GET", f"/session/{sid}")
    assert status == 404


async def test_environ_and_work_dir(api: RawAPI, server: ServerProcess) -> None:
    sid = await api.create(
        f"t-env-{uuid.uuid4().hex[:6]}", config={"environ": {"RK_TEST_VALUE": "forty-two"}}
    )
    try:
        records, result = await api.run(
            sid, "import os; print(os.environ['RK_TEST_VALUE']); print(os.getcwd())"
        )
        assert result["exitCode"] == 0
        value, cwd = records[0][1].splitlines()
        assert value == "forty-two"
        if server.sandbox == "bubblewrap":
            assert cwd == "/home/work"
        else:
            assert cwd.endswith(f"/sessions/{sid}/work")
    finally:
        await api.destroy(sid)


async def test_restart_clears_state_keeps_files(api: RawAPI, sid: str) -> None:
    await api.run(sid, "x = 1\nopen('kept.txt', 'w').write('kept')")
    status, _ = await api.call("PATCH", f"/session/{sid}")
    assert status == 204
    records, result = await api.run(sid, "print(open('kept.txt').read()); print('x' in globals())")
    assert records == [["stdout", "kept\nFalse\n"]]
    assert result["exitCode"] == 0


async def test_logs_are_the_kernel_process_output(api: RawAPI, sid: str) -> None:
    await api.run(sid, "import os; os.write(2, b'straight-to-fd-2\\n')")
    status, body = await api.call("GET", f"/session/{sid}/logs")
    assert status == 200
    assert "straight-to-fd-2" in body["result"]["logs"]


# -- the run loop: base layer -----
async def test_stdout_stderr_interleaving_kept(api: RawAPI, sid: str) -> None:
    code = (
        "import sys\n"
        "for i in range(3):\n"
        "    print(f'out{i}', flush=True)\n"
        "    print(f'err{i}', file=sys.stderr, flush=True)\n"
    )
    records, result = await api.run(sid, code)
    assert result["exitCode"] == 0
    assert merge_console(records) == [
        ["stdout", "out0\n"], ["stderr", "err0\n"], ["stdout", "out1\n"],
        ["stderr", "err1\n"], ["stdout", "out2\n"], ["stderr", "err2\n"],
    ]  # fmt: skip


async def test_fifty_thousand_lines_complete_and_in_order(api: RawAPI, sid: str) -> None:
    records, result = await api.run(sid, "for i in range(50000): print(i)")
    assert result["exitCode"] == 0
    assert {r[0] for r in records} == {"stdout"}
    text = "".join(r[1] for r in records)
    assert text == "".join(f"{i}\n" for i in range(50000))


async def test_base_layer_fidelity(api: RawAPI, sid: str) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
    code = (
        "from IPython.display import display, HTML, Image, Markdown\n"
        "import base64\n"
        f"display(Image(data=base64.b64decode('{png}'), format='png'))\n"
        "display(HTML('<b>bold</b>'))\n"
        "display({'text/plain': 'plain only'}, raw=True)\n"
        "42\n"
    )
    records, result = await api.run(sid, code)
    assert result["exitCode"] == 0
    assert "reply" not in result and result["options"] is None
    assert records == [
        ["media", ["image/png", f"data:image/png;base64,{png}"]],
        ["media", ["text/html", "<b>bold</b>"]],
        ["stdout", "plain only42"],
    ]


async def test_base_layer_error_is_stderr_and_exit_code(api: RawAPI, sid: str) -> None:
    records, result = await api.run(sid, "print('before')\nundefined_name")
    assert result["status"] == "finished" and result["exitCode"] == 1
    assert records[0] == ["stdout", "before\n"]
    assert records[1][0] == "stderr"
    assert (
        strip_ansi(records[1][1])
        .rstrip()
        .endswith("NameError: name 'undefined_name' is not defined")
    )


async def test_input_and_getpass_base_layer(api: RawAPI, sid: str) -> None:
    run_id = rid()
    first = await api.execute(sid, "query", "a = input('name? ')\nprint('hi', a)", run_id)
    assert first["status"] == "waiting-input"
    assert first["options"] == {"is_password": False}
    assert first["console"] == [["stdout", "name? "]]
    done = await api.drain(sid, await api.execute(sid, "input", "bob", run_id))
    assert (done["status"], done["console"]) == ("finished", [["stdout", "hi bob\n"]])
    run_id = rid()
    first = await api.execute(sid, "query", "import getpass; p = getpass.getpass('pw: ')", run_id)
    assert first["status"] == "waiting-input" and first["options"] == {"is_password": True}
    done = await api.drain(sid, await api.execute(sid, "input", "s3cret", run_id))
    assert done["status"] == "finished" and done["exitCode"] == 0
    records, _ = await api.run(sid, "print(len(p))")
    assert records == [["stdout", "6\n"]]


# -- the run loop: extensions -----
async def test_jupyter_records(api: RawAPI, sid: str) -> None:
    code = (
        "from IPython.display import display, update_display, clear_output\n"
        "display({'text/plain': 'p', 'text/html': '<i>h</i>', 'application/json': {'a': 1}},"
        " raw=True, metadata={'application/json': {'expanded': True}})\n"
        "h = display('first', display_id='d1')\n"
        "update_display('second', display_id='d1')\n"
        "clear_output(wait=True)\n"
        "6 * 7\n"
    )
    records, result = await api.run(sid, code, jupyter=True)
    assert [r[0] for r in records] == [
        "display_data", "display_data", "update_display_data", "clear_output", "execute_result"
    ]  # fmt: skip
    assert records[0][1] == {
        "data": {"text/plain": "p", "text/html": "<i>h</i>", "application/json": {"a": 1}},
        "metadata": {"application/json": {"expanded": True}},
        "transient": {},
    }
    assert records[1][1]["data"] == {"text/plain": "'first'"}
    assert records[1][1]["transient"] == {"display_id": "d1"}
    assert records[2][1]["data"] == {"text/plain": "'second'"}
    assert records[2][1]["transient"] == {"display_id": "d1"}
    assert records[3][1] == {"wait": True}
    count = result["reply"]["execution_count"]
    assert records[4][1] == {"data": {"text/plain": "42"}, "metadata": {}, "execution_count": count}
    assert result["reply"]["status"] == "ok" and result["exitCode"] == 0


async def test_jupyter_error_record_and_reply(api: RawAPI, sid: str) -> None:
    records, result = await api.run(sid, "raise ValueError('bad value')", jupyter=True)
    assert len(records) == 1 and records[0][0] == "error"
    err = records[0][1]
    assert (err["ename"], err["evalue"]) == ("ValueError", "bad value")
    assert "ValueError" in strip_ansi("\n".join(err["traceback"]))
    assert result["exitCode"] == 1
    assert result["reply"]["status"] == "error"
    assert (result["reply"]["ename"], result["reply"]["evalue"]) == ("ValueError", "bad value")


async def test_jupyter_input_prompt_in_options(api: RawAPI, sid: str) -> None:
    run_id = rid()
    opts = {"console": "jupyter"}
    first = await api.execute(sid, "query", "v = input('who? ')", run_id, options=opts)
    assert first["status"] == "waiting-input"
    assert first["options"] == {"is_password": False, "prompt": "who? ", "input_seq": 1}
    assert first["console"] == []
    done = await api.drain(
        sid, await api.execute(sid, "input", "ann", run_id, options={"input_seq": 1})
    )
    assert done["status"] == "finished" and done["reply"]["status"] == "ok"


async def test_input_seq_deduplicates_retried_input(api: RawAPI, sid: str) -> None:
    run_id = rid()
    code = "a = input('1? '); b = input('2? '); print(repr(a), repr(b))"
    first = await api.execute(sid, "query", code, run_id, options={"console": "jupyter"})
    assert first["options"]["prompt"] == "1? "
    second = await api.drain(
        sid, await api.execute(sid, "input", "one", run_id, options={"input_seq": 1})
    )
    assert second["status"] == "waiting-input" and second["options"]["prompt"] == "2? "
    # the retry of the first answer must not answer the second prompt
    again = await api.drain(
        sid, await api.execute(sid, "input", "one", run_id, options={"input_seq": 1})
    )
    assert again["status"] == "waiting-input"
    done = await api.drain(
        sid, await api.execute(sid, "input", "two", run_id, options={"input_seq": 2})
    )
    assert done["status"] == "finished"
    assert done["console"] == [["stdout", "'one' 'two'\n"]]


async def test_cursor_replay_returns_identical_records(api: RawAPI, sid: str) -> None:
    run_id = rid()
    code = "import time\nfor i in range(5):\n    print(i, flush=True); time.sleep(0.2)\n"
    result = await api.execute(sid, "query", code, run_id, options={"console": "jupyter"})
    seen = list(result["console"])
    cursor = result["cursor"]
    assert cursor == len(seen)
    while result["status"] != "finished":
        result = await api.execute(sid, "continue", "", run_id, cursor=cursor)
        replay = await api.execute(sid, "continue", "", run_id, cursor=cursor)
        # a lost response is retried with the same cursor: same records (a prefix, if more came)
        assert replay["console"][: len(result["console"])] == result["console"]
        seen += result["console"]
        cursor = result["cursor"]
    again = await api.execute(sid, "continue", "", run_id, cursor=0)
    assert again["status"] == "finished"
    assert "".join(r[1] for r in seen) == "0\n1\n2\n3\n4\n"
    assert again["console"] == [] or "".join(r[1] for r in again["console"]) == "0\n1\n2\n3\n4\n"
    final = await api.execute(sid, "continue", "", run_id, cursor=cursor)
    assert (final["status"], final["console"], final["cursor"]) == ("finished", [], cursor)


async def test_retried_query_is_not_executed_twice(api: RawAPI, sid: str) -> None:
    await api.run(sid, "counter = 0")
    run_id = rid()
    opts = {"console": "jupyter"}
    first = await api.execute(sid, "query", "counter += 1; counter", run_id, options=opts)
    # the client lost that response: it sends the same query again, with cursor 0
    retry = await api.execute(sid, "query", "counter += 1; counter", run_id, options=opts, cursor=0)
    assert retry["console"][: len(first["console"])] == first["console"]
    records = list(retry["console"])
    while retry["status"] != "finished":
        retry = await api.execute(sid, "continue", "", run_id, cursor=retry["cursor"])
        records += retry["console"]
    assert [r[0] for r in records] == ["execute_result"]
    assert records[0][1]["data"] == {"text/plain": "1"}
    records, _ = await api.run(sid, "print(counter)")
    assert records == [["stdout", "1\n"]]


# -- interrupt and abandoned runs -----
async def test_interrupt_while_running_keeps_state(api: RawAPI, sid: str) -> None:
    run_id = rid()
    result = await api.execute(sid, "query", "import time\nkept = 42\ntime.sleep(30)", run_id)
    assert result["status"] == "continued"
    status, _ = await api.call("POST", f"/session/{sid}/interrupt")
    assert status == 204
    loop = asyncio.get_running_loop()
    started = loop.time()
    records = list(result["console"])
    while result["status"] != "finished":
        result = await api.execute(sid, "continue", "", run_id)
        records += result["console"]
    assert loop.time() - started < 5
    assert result["exitCode"] == 1
    assert "KeyboardInterrupt" in strip_ansi("".join(r[1] for r in records))
    records, _ = await api.run(sid, "print(kept)")
    assert records == [["stdout", "42\n"]]


async def test_interrupt_while_waiting_for_input(api: RawAPI, sid: str) -> None:
    run_id = rid()
    first = await api.execute(sid, "query", "answer = input('? ')", run_id)
    assert first["status"] == "waiting-input"
    status, _ = await api.call("POST", f"/session/{sid}/interrupt")
    assert status == 204
    result = await api.execute(sid, "continue", "", run_id)
    records = list(result["console"])
    while result["status"] != "finished":
        result = await api.execute(sid, "continue", "", run_id)
        records += result["console"]
    assert result["exitCode"] == 1
    assert "KeyboardInterrupt" in strip_ansi("".join(r[1] for r in records))
    records, result = await api.run(sid, "print('alive')")
    assert records == [["stdout", "alive\n"]]


async def test_idle_interrupt_is_harmless(api: RawAPI, sid: str) -> None:
    status, _ = await api.call("POST", f"/session/{sid}/interrupt")
    assert status == 204
    records, result = await api.run(sid, "print('still fine')")
    assert (records, result["exitCode"]) == ([["stdout", "still fine\n"]], 0)


async def test_abandoned_runs_never_wedge_the_session(api: RawAPI, sid: str) -> None:
    # abandoned while waiting for input
    first = await api.execute(sid, "query", "input('never answered? ')", rid())
    assert first["status"] == "waiting-input"
    records, result = await api.run(sid, "print('next cell')")
    assert records == [["stdout", "next cell\n"]] and result["exitCode"] == 0
    # abandoned while running: the next cell runs after it
    first = await api.execute(sid, "query", "import time; time.sleep(1.5); print('late')", rid())
    assert first["status"] == "continued"
    records, result = await api.run(sid, "print('after')")
    assert records == [["stdout", "after\n"]] and result["exitCode"] == 0


async def test_poll_returns_soon_after_output(api: RawAPI, sid: str) -> None:
    run_id = rid()
    code = "import time\ntime.sleep(0.3)\nprint('tick', flush=True)\ntime.sleep(3)"
    loop = asyncio.get_running_loop()
    result = await api.execute(sid, "query", code, run_id, options={"console": "jupyter"})
    holds = []
    while not any(r == ["stdout", "tick\n"] for r in result["console"]):
        started = loop.time()
        result = await api.execute(sid, "continue", "", run_id, cursor=result["cursor"])
        holds.append(loop.time() - started)
    assert all(h < 1.5 for h in holds)  # bounded hold (default 1 s) when nothing comes
    await api.call("POST", f"/session/{sid}/interrupt")
    while result["status"] != "finished":
        result = await api.execute(sid, "continue", "", run_id, cursor=result["cursor"])


# -- completion and introspection -----
async def test_complete_inspect_is_complete(api: RawAPI, sid: str) -> None:
    status, body = await api.call(
        "POST", f"/session/{sid}/complete", {"code": "import o", "options": {}}
    )
    assert status == 200
    result = body["result"]
    assert result["status"] == "finished" and result["error"] is None
    assert "os" in result["suggestions"] and result["suggestions"] == result["matches"]
    assert (result["cursor_start"], result["cursor_end"]) == (7, 8)
    status, body = await api.call(
        "POST", f"/session/{sid}/inspect", {"code": "len", "cursor_pos": 3, "detail_level": 0}
    )
    assert status == 200 and body["result"]["found"] is True
    assert "text/plain" in body["result"]["data"]
    for code, expected in [("for i in range(3):", "incomplete"), ("x = 1", "complete")]:
        status, body = await api.call("POST", f"/session/{sid}/is-complete", {"code": code})
        assert (status, body["result"]["status"]) == (200, expected)


# -- extensions off: a real manager's behaviour -----
async def test_extensions_off_behaves_like_a_manager(base_server: ServerProcess) -> None:
    async with RawAPI(base_server.endpoint, base_server.access_key, base_server.secret_key) as api:
        status, hello = await api.call("GET", "/", sign=False)
        assert "remote_kernel" not in hello
        status, made = await api.call("POST", "/session", {"image": "python", "name": "t-base-1"})
        assert status == 201 and "kernelInfo" not in made
        sid = made["sessionId"]
        try:
            status, info = await api.call("GET", f"/session/{sid}")
            assert "kernelInfo" not in info
            records, result = await api.run(sid, "1 + 1", jupyter=True)
            assert records == [["stdout", "2"]]
            assert "cursor" not in result and "reply" not in result
            status, _ = await api.call("POST", f"/session/{sid}/inspect", {"code": "len"})
            assert status == 404
            status, body = await api.call("POST", f"/session/{sid}/complete", {"code": "import o"})
            assert set(body["result"]) == {"status", "error", "suggestions"}
        finally:
            await api.destroy(sid)


@pytest.mark.timeout(60)
def test_anonymous_access_refused_off_loopback(tmp_path: os.PathLike[str]) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "remote_kernel", "serve", "--ip", "0.0.0.0", "--port", "0",
         "--auth", "none", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Refusing --auth none on 0.0.0.0" in proc.stderr
