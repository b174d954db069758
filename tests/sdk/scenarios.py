"""The official Backend.AI SDK's documented examples, one function per scenario.

Runs inside an isolated venv holding ``backend.ai-client`` (never the project's venv), so it
imports nothing but the standard library and the SDK::

    <sdk-venv>/bin/python tests/sdk/scenarios.py <scenario> [session-name]

Configuration comes from the SDK's own environment variables (``BACKEND_ENDPOINT``,
``BACKEND_ACCESS_KEY``, ``BACKEND_SECRET_KEY``); the second keypair of the ``other_key`` scenario
from ``RK_OTHER_ACCESS_KEY`` / ``RK_OTHER_SECRET_KEY``. The scenario prints one line
``RESULT <json>`` with what the test asserts on. A ``BackendAPIError`` escaping a scenario is
reported as ``{"api_error": {"status", "reason", "data"}}`` (the test decides if that is wrong).

The run loop is the one from the SDK documentation ("Code execution via API"): ``execute`` with
``mode="query"``, then ``continue`` on ``continued`` and ``input`` on ``waiting-input`` until
``finished``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ai.backend.client.config import APIConfig
from ai.backend.client.exceptions import BackendAPIError
from ai.backend.client.session import AsyncSession, Session

IMAGE = "python:3.9-ubuntu20.04"
# A 1x1 RGBA PNG.
PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42"
    "mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
TERMINAL = ("finished", "exec-timeout")


def api_error(exc: BackendAPIError) -> dict[str, Any]:
    return {"status": exc.status, "args0": exc.args[0], "reason": exc.reason, "data": exc.data}


def run_loop(compute: Any, code: str, inputs: list[str] | None = None) -> dict[str, Any]:
    """The documented query loop; returns everything a test may assert on.

    ``console`` is every record received, in order; ``stdout``/``stderr`` the joined text;
    ``waits`` one entry per ``waiting-input`` with ``is_password`` and the stdout text received
    since the previous input (the prompt, in the base layer).
    """
    inputs = list(inputs or [])
    mode, run_id = "query", None
    statuses: list[str] = []
    console: list[Any] = []
    waits: list[dict[str, Any]] = []
    since_input = ""
    result: dict[str, Any] = {}
    started = time.monotonic()
    while True:
        result = compute.execute(run_id, code, mode=mode)
        run_id = result["runId"]
        statuses.append(result["status"])
        for rec in result.get("console") or []:
            console.append(rec)
            if rec[0] == "stdout":
                since_input += rec[1]
        if result["status"] in TERMINAL:
            break
        if result["status"] == "waiting-input":
            options = result.get("options") or {}
            waits.append({"is_password": options.get("is_password", False), "text": since_input})
            since_input = ""
            mode, code = "input", inputs.pop(0)
        else:
            mode, code = "continue", ""
    return {
        "runId": run_id,
        "status": result["status"],
        "exitCode": result.get("exitCode"),
        "statuses": statuses,
        "console": console,
        "stdout": "".join(r[1] for r in console if r[0] == "stdout"),
        "stderr": "".join(r[1] for r in console if r[0] == "stderr"),
        "waits": waits,
        "elapsed": time.monotonic() - started,
    }


def _create(api: Any, name: str, image: str = IMAGE) -> Any:
    return api.ComputeSession.get_or_create(image, name=name)


@contextmanager
def _session(name: str, image: str = IMAGE) -> Iterator[tuple[Any, Any]]:
    """A sync API session and a compute session in it, destroyed at the end."""
    with Session() as api:
        compute = _create(api, name, image)
        try:
            yield api, compute
        finally:
            compute.destroy()


def _destroy_quietly(compute: Any) -> None:
    try:
        compute.destroy()
    except BackendAPIError:
        pass


# -- scenarios ----------------------------------------------------------------------------------
def hello(name: str) -> dict[str, Any]:
    """The documented example: print("hello world") in query mode, then destroy."""
    with Session() as api:
        compute = _create(api, name)
        try:
            run = run_loop(compute, 'print("hello world")')
        finally:
            destroyed = compute.destroy()
    return {
        "session_id": str(compute.id),
        "created": compute.created,
        "status": compute.status,
        "run": run,
        "destroyed": destroyed,
        "api_version": list(api.api_version),
    }


def hello_async(name: str) -> dict[str, Any]:
    """The same with ``AsyncSession``."""

    async def main() -> dict[str, Any]:
        async with AsyncSession() as api:
            compute = await api.ComputeSession.get_or_create(IMAGE, name=name)
            try:
                mode, code, run_id = "query", 'print("hello world")', None
                stdout, statuses = "", []
                while True:
                    result = await compute.execute(run_id, code, mode=mode)
                    run_id = result["runId"]
                    statuses.append(result["status"])
                    stdout += "".join(r[1] for r in result["console"] if r[0] == "stdout")
                    if result["status"] in TERMINAL:
                        break
                    mode, code = "continue", ""
            finally:
                await compute.destroy()
        return {"stdout": stdout, "statuses": statuses, "exitCode": result["exitCode"]}

    return asyncio.run(main())


def user_input(name: str) -> dict[str, Any]:
    """``input()`` and ``getpass`` answered with ``mode="input"``."""
    code = (
        "import getpass\n"
        "name = input('Your name: ')\n"
        "secret = getpass.getpass('Password: ')\n"
        "print(f'hi {name}, {len(secret)} chars')\n"
    )
    with _session(name) as (_, compute):
        return {"run": run_loop(compute, code, inputs=["Ada", "s3cret!"])}


def error(name: str) -> dict[str, Any]:
    """An exception in user code: finished, exitCode != 0, the traceback on stderr."""
    with _session(name) as (_, compute):
        failing = run_loop(compute, "print('before')\nundefined_name_xyz\nprint('after')")
        after = run_loop(compute, "print('still alive')")
        return {"run": failing, "after": after}


def media(name: str) -> dict[str, Any]:
    """Images come back as ``["media", [mime, data URI]]``; SVG as raw text."""
    png = (
        "import base64\n"
        "from IPython.display import Image, display\n"
        f"display(Image(data=base64.b64decode('{PNG_B64}')))\n"
    )
    svg = (
        "from IPython.display import SVG, display\n"
        'display(SVG(\'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>\'))\n'
    )
    plot = "import matplotlib\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\n"
    with _session(name) as (_, compute):
        return {
            "png": run_loop(compute, png),
            "svg": run_loop(compute, svg),
            "plot": run_loop(compute, plot),
        }


def interrupt(name: str) -> dict[str, Any]:
    """Interrupt ``time.sleep(30)`` about a second in; the kernel keeps its state."""
    with _session(name) as (_, compute):
        started = time.monotonic()
        result = compute.execute(None, "import time\nx = 42\ntime.sleep(30)", mode="query")
        run_id = result["runId"]
        statuses = [result["status"]]
        console = list(result.get("console") or [])
        first_poll = time.monotonic() - started
        if result["status"] in TERMINAL:
            return {"error": "the sleep finished before the interrupt", "result": result}
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        interrupted_at = time.monotonic()
        compute.interrupt()
        while result["status"] not in TERMINAL:
            if time.monotonic() - interrupted_at > 25:
                break
            result = compute.execute(run_id, "", mode="continue")
            statuses.append(result["status"])
            console += result.get("console") or []
        drained = time.monotonic() - interrupted_at
        after = run_loop(compute, "print(x)")
        return {
            "first_poll": first_poll,
            "drained_after_interrupt": drained,
            "status": result["status"],
            "exitCode": result.get("exitCode"),
            "statuses": statuses,
            "stdout": "".join(r[1] for r in console if r[0] == "stdout"),
            "stderr": "".join(r[1] for r in console if r[0] == "stderr"),
            "after": after,
        }


def complete(name: str) -> dict[str, Any]:
    """``complete()`` with the row/col options the SDK sends."""
    with _session(name) as (_, compute):
        setup = run_loop(compute, "import os")
        module = compute.complete(
            "import o", opts={"row": 0, "col": 8, "line": "import o", "post": ""}
        )
        attribute = compute.complete(
            "os.pa", opts={"row": 0, "col": 5, "line": "os.pa", "post": ""}
        )
        return {"setup": setup, "module": module, "attribute": attribute}


def info_logs(name: str) -> dict[str, Any]:
    """``get_info()`` and ``get_logs()``."""
    with _session(name) as (_, compute):
        run = run_loop(compute, "print('logged')")
        return {
            "session_id": str(compute.id),
            "run": run,
            "info": compute.get_info(),
            "logs": compute.get_logs(),
        }


def restart(name: str) -> dict[str, Any]:
    """``restart()`` clears the kernel state but keeps the files in the work directory."""
    with _session(name) as (_, compute):
        before = run_loop(
            compute,
            "x = 42\nwith open('kept.txt', 'w') as fh:\n    fh.write('kept across restart')\n"
            "print(x)",
        )
        restarted = compute.restart()
        state = run_loop(compute, "print(x)")
        files = run_loop(compute, "print(open('kept.txt').read())")
        info = compute.get_info()
        return {
            "before": before,
            "restart_returned": restarted,
            "state": state,
            "files": files,
            "info_status": info.get("status"),
        }


def reuse(name: str) -> dict[str, Any]:
    """``get_or_create`` with the same name and image returns the same session."""
    with Session() as api:
        first = _create(api, name)
        try:
            run_loop(first, "reused_marker = 'same kernel'")
        except BaseException:
            _destroy_quietly(first)
            raise
    try:
        with Session() as api:
            second = _create(api, name)
            marker = run_loop(second, "print(reused_marker)")
            try:
                other_image = _create(api, name, image="python:3.11-ubuntu22.04")
                conflict: Any = {"created": other_image.created, "id": str(other_image.id)}
            except BackendAPIError as exc:
                conflict = api_error(exc)
    finally:
        with Session() as api:
            _destroy_quietly(api.ComputeSession(name))
    return {
        "first": {"id": str(first.id), "created": first.created, "status": first.status},
        "second": {"id": str(second.id), "created": second.created, "status": second.status},
        "marker": marker,
        "other_image": conflict,
    }


def destroy(name: str) -> dict[str, Any]:
    """``destroy()``; afterwards the session is gone (404)."""
    with Session() as api:
        compute = _create(api, name)
        run_loop(compute, "print('bye')")
        destroyed = compute.destroy()
        out: dict[str, Any] = {"destroyed": destroyed}
        try:
            out["info_after"] = compute.get_info()
        except BackendAPIError as exc:
            out["info_after"] = api_error(exc)
        try:
            out["execute_after"] = compute.execute(None, "1", mode="query")
        except BackendAPIError as exc:
            out["execute_after"] = api_error(exc)
        # The name is free again: a new session, not the old one.
        again = _create(api, name)
        out["recreated"] = {"created": again.created, "same_id": again.id == compute.id}
        again.destroy()
    return out


def files(name: str) -> dict[str, Any]:
    """``upload()`` (a nested path too), ``list_files()`` and ``download()``."""
    os.makedirs("sub", exist_ok=True)
    with open("data.txt", "w") as fh:
        fh.write("top level\n")
    with open(os.path.join("sub", "nested.txt"), "w") as fh:
        fh.write("nested file\n")
    with _session(name) as (_, compute):
        compute.upload(["data.txt", os.path.join("sub", "nested.txt")])
        read = run_loop(
            compute, "print(open('data.txt').read() + open('sub/nested.txt').read(), end='')"
        )
        top = compute.list_files(".")
        downloaded = compute.download(["data.txt", "sub/nested.txt"], dest="dl")
        contents = {}
        for root, _dirs, names in os.walk("dl"):
            for fname in names:
                path = os.path.join(root, fname)
                with open(path) as fh:
                    contents[os.path.relpath(path, "dl")] = fh.read()
        return {
            "read": read,
            "list_top": top,
            "downloaded": downloaded,
            "contents": contents,
        }


def abandon(name: str) -> dict[str, Any]:
    """A run left undrained (one poll, then a new query) must not wedge the session."""
    with _session(name) as (_, compute):
        first = compute.execute(
            None, "import time\ntime.sleep(2)\nprint('first done')", mode="query"
        )
        started = time.monotonic()
        second = run_loop(compute, "print('second')")
        return {
            "first_status": first["status"],
            "second": second,
            "second_elapsed": time.monotonic() - started,
        }


def upload_missing(name: str) -> dict[str, Any]:
    """Uploads to a session that does not exist, repeated on one connection: 404 each time.

    The server answers before reading the body; the connection must stay usable (SDK 23.9's
    aiohttp 3.8 reuses it without finishing the body unless the server closes it).
    """
    with open("payload.txt", "w") as fh:
        fh.write("x" * 100)
    errors = []
    with Session() as api:
        ghost = api.ComputeSession(name)
        for _ in range(3):
            try:
                ghost.upload(["payload.txt"])
                errors.append(None)
            except BackendAPIError as exc:
                errors.append(api_error(exc))
        compute = _create(api, name)
        try:
            run = run_loop(compute, "print('usable')")
        finally:
            compute.destroy()
    return {"errors": errors, "run": run}


def wrong_secret(name: str) -> dict[str, Any]:
    """A wrong secret key (the test sets it in the environment) gives 401 auth-failed."""
    with Session() as api:
        try:
            compute = _create(api, name)
        except BackendAPIError as exc:
            return {"api_error": api_error(exc)}
        compute.destroy()
        return {"created": True}


def other_key(name: str) -> dict[str, Any]:
    """A session belongs to the keypair that created it; another keypair gets 404."""
    other = APIConfig(
        endpoint=os.environ["BACKEND_ENDPOINT"],
        access_key=os.environ["RK_OTHER_ACCESS_KEY"],
        secret_key=os.environ["RK_OTHER_SECRET_KEY"],
    )
    with _session(name):
        with Session(config=other) as api2:
            try:
                seen: Any = api2.ComputeSession(name).get_info()
            except BackendAPIError as exc:
                seen = api_error(exc)
        return {"other_get_info": seen}


def vfolders(name: str) -> dict[str, Any]:
    """``VFolder.create`` / ``list`` / ``info``, a session mounting the folder, ``delete``; the
    other keypair sees none of it and cannot mount it."""
    other = APIConfig(
        endpoint=os.environ["BACKEND_ENDPOINT"],
        access_key=os.environ["RK_OTHER_ACCESS_KEY"],
        secret_key=os.environ["RK_OTHER_SECRET_KEY"],
    )
    folder = name  # unique per run, and a valid folder name
    out: dict[str, Any] = {"folder": folder}

    def attempt(call: Any) -> Any:
        try:
            return call()
        except BackendAPIError as exc:
            return {"api_error": api_error(exc)}

    with Session() as api:
        out["created"] = api.VFolder.create(folder)
        out["listed"] = [f["name"] for f in api.VFolder.list()]
        out["info"] = api.VFolder(folder).info()
        compute = api.ComputeSession.get_or_create(IMAGE, name=name, mounts=[folder])
        try:
            out["run"] = run_loop(
                compute,
                f"open('{folder}/hello.txt', 'w').write('hi')\n"
                f"import os; print(sorted(os.listdir('{folder}')))",
            )
            with Session(config=other) as api2:
                out["other_listed"] = [f["name"] for f in api2.VFolder.list()]
                out["other_info"] = attempt(lambda: api2.VFolder(folder).info())
                out["other_mount"] = attempt(
                    lambda: api2.ComputeSession.get_or_create(
                        IMAGE, name=name + "-b", mounts=[folder]
                    ).destroy()
                )
                out["other_delete"] = attempt(lambda: api2.VFolder(folder).delete())
        finally:
            compute.destroy()
        out["info_after"] = api.VFolder(folder).info()
        out["deleted"] = api.VFolder(folder).delete()
        out["listed_after"] = [f["name"] for f in api.VFolder.list()]
        out["mount_deleted"] = attempt(
            lambda: api.ComputeSession.get_or_create(
                IMAGE, name=name + "-c", mounts=[folder]
            ).destroy()
        )
    return out


SCENARIOS = {
    f.__name__: f
    for f in (
        hello,
        hello_async,
        user_input,
        error,
        media,
        interrupt,
        complete,
        info_logs,
        restart,
        reuse,
        files,
        abandon,
        upload_missing,
        destroy,
        wrong_secret,
        other_key,
        vfolders,
    )
}


# -- batch mode, files and streams (tests/test_sdk_surface.py) ------------------------------------
MYCODE = (
    "import sys\n"
    "print('args:', ' '.join(sys.argv[1:]))\n"
    "with open('data/input.txt') as fh:\n"
    "    data = fh.read()\n"
    "print('data:', data.strip())\n"
    "with open('result.txt', 'w') as fh:\n"
    "    fh.write(data.upper())\n"
)
INPUT_TXT = "forty two\n"
BATCH_OPTS = {"clean": "*", "build": "*", "exec": "python mycode.py arg1 arg2"}


def batch_loop(compute: Any, opts: dict[str, Any]) -> dict[str, Any]:
    """The documented batch loop: ``execute(mode="batch", opts=...)``, then ``continue``.

    ``steps`` holds one entry per status that ends a step (anything but ``continued``) with the
    output received since the previous one.
    """
    result = compute.execute(mode="batch", opts=opts)
    run_id = result["runId"]
    statuses: list[str] = []
    steps: list[dict[str, Any]] = []
    console: list[Any] = []
    while True:
        statuses.append(result["status"])
        console += result.get("console") or []
        if result["status"] != "continued":
            steps.append(
                {
                    "status": result["status"],
                    "exitCode": result.get("exitCode"),
                    "stdout": "".join(r[1] for r in console if r[0] == "stdout"),
                    "stderr": "".join(r[1] for r in console if r[0] == "stderr"),
                }
            )
            console = []
        if result["status"] in TERMINAL:
            break
        result = compute.execute(run_id, "", mode="continue")
        if result["runId"] != run_id:
            raise AssertionError(f"runId changed: {run_id!r} -> {result['runId']!r}")
    return {"runId": run_id, "statuses": statuses, "steps": steps}


def batch_files(name: str) -> dict[str, Any]:
    """Upload mycode.py and data/input.txt (basedir), run the documented batch example, run a
    batch whose build fails, list the work dir and download the file mycode.py wrote."""
    os.makedirs(os.path.join("project", "data"))
    with open(os.path.join("project", "mycode.py"), "w") as fh:
        fh.write(MYCODE)
    with open(os.path.join("project", "data", "input.txt"), "w") as fh:
        fh.write(INPUT_TXT)
    with _session(name) as (_, compute):
        compute.upload(
            [os.path.join("project", "mycode.py"),
             os.path.join("project", "data", "input.txt")],
            basedir="project",
        )  # fmt: skip
        ok = batch_loop(compute, BATCH_OPTS)
        failed = batch_loop(compute, {**BATCH_OPTS, "build": "exit 3"})
        top = compute.list_files(".")
        data_dir = compute.list_files("data")
        downloaded = compute.download(["result.txt"], dest="downloads")
        contents = {}
        for root, _dirs, names in os.walk("downloads"):
            for fname in names:
                path = os.path.join(root, fname)
                with open(path) as fh:
                    contents[os.path.relpath(path, "downloads")] = fh.read()
        return {
            "batch": ok,
            "failed_build": failed,
            "list_top": top,
            "list_data": data_dir,
            "downloaded": downloaded,
            "contents": contents,
            "local_sizes": {
                "mycode.py": len(MYCODE.encode()),
                "input.txt": len(INPUT_TXT.encode()),
            },
        }


def stream_execute_input(name: str) -> dict[str, Any]:
    """``stream_execute`` (AsyncSession): ``input()`` answered with a plain text frame."""
    code = "name = input('Your name: ')\nprint(f'hello {name}!')\n"

    async def main() -> dict[str, Any]:
        import aiohttp

        async with AsyncSession() as api:
            compute = await api.ComputeSession.get_or_create(IMAGE, name=name)
            try:
                frames: list[Any] = []
                async with compute.stream_execute(code, mode="query") as ws:

                    async def collect() -> None:
                        async for msg in ws:
                            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                                frames.append([str(msg.type), repr(msg.data)])
                                continue
                            frame = json.loads(msg.data)
                            frames.append(frame)
                            if frame.get("status") == "waiting-input":
                                await ws.send_str("Ada")

                    await asyncio.wait_for(collect(), 60)
                    closed = ws.closed
                # The run loop: output may come with any ``continued`` before ``finished``, so
                # keep every response's records (as run_loop does), not just the last one's.
                after = await compute.execute(None, "print(name)", mode="query")
                statuses, console = [after["status"]], list(after.get("console") or [])
                while after["status"] not in TERMINAL:
                    after = await compute.execute(after["runId"], "", mode="continue")
                    statuses.append(after["status"])
                    console += after.get("console") or []
            finally:
                await compute.destroy()
        after = {**after, "statuses": statuses, "console": console}
        return {"frames": frames, "closed": closed, "after": after}

    return asyncio.run(main())


def stream_pty(name: str) -> dict[str, Any]:
    """``stream_pty`` (AsyncSession): a shell command's output comes back as ``out`` frames."""

    async def main() -> dict[str, Any]:
        import base64

        import aiohttp

        async with AsyncSession() as api:
            compute = await api.ComputeSession.get_or_create(IMAGE, name=name)
            try:
                kinds: list[str] = []
                text = ""
                async with compute.stream_pty() as pty:
                    command = base64.b64encode(b"echo hi-$((1+2))\n").decode()
                    await pty.send_str(json.dumps({"type": "stdin", "chars": command}))

                    async def read_until_hi() -> None:
                        nonlocal text
                        async for msg in pty:
                            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                                kinds.append(str(msg.type))
                                return
                            frame = json.loads(msg.data)
                            kinds.append(frame.get("type"))
                            if frame.get("type") == "out":
                                text += base64.b64decode(frame["data"]).decode(errors="replace")
                                lines = [ln.strip() for ln in text.splitlines()]
                                if "hi-3" in lines:
                                    return

                    await asyncio.wait_for(read_until_hi(), 30)
            finally:
                await compute.destroy()
        return {"kinds": kinds, "text": text}

    return asyncio.run(main())


def listen_events(name: str) -> dict[str, Any]:
    """``listen_events`` (AsyncSession): destroying the session from another task ends the stream
    with ``session_terminated`` and then ``server_close``, where the SDK's iterator stops."""

    async def main() -> dict[str, Any]:
        async with AsyncSession() as api:
            compute = await api.ComputeSession.get_or_create(IMAGE, name=name)
            events: list[dict[str, Any]] = []
            destroyed: Any = None
            try:
                async with compute.listen_events() as stream:

                    async def destroy_soon() -> Any:
                        await asyncio.sleep(0.5)
                        return await compute.destroy()

                    destroyer = asyncio.ensure_future(destroy_soon())

                    async def collect() -> None:
                        async for ev in stream:
                            events.append({"event": ev.event, "data": json.loads(ev.data)})

                    started = time.monotonic()
                    await asyncio.wait_for(collect(), 60)
                    elapsed = time.monotonic() - started
                    destroyed = await destroyer
            except BaseException:
                try:
                    await compute.destroy()
                except BackendAPIError:
                    pass
                raise
        return {
            "session_id": str(compute.id),
            "events": events,
            "iterator_stopped": True,
            "elapsed": elapsed,
            "destroyed": destroyed,
        }

    return asyncio.run(main())


SCENARIOS.update(
    {f.__name__: f for f in (batch_files, stream_execute_input, stream_pty, listen_events)}
)


def main(argv: list[str]) -> int:
    scenario, name = argv[0], argv[1]
    try:
        out = SCENARIOS[scenario](name)
    except BackendAPIError as exc:
        out = {"api_error": api_error(exc)}
    sys.stdout.write("RESULT " + json.dumps(out, default=repr) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
