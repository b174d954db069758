"""Batch mode over HTTP: clean → build → exec shell steps in the session's work dir."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from .rawapi import RawAPI

pytestmark = pytest.mark.timeout(120)


async def batch(api: RawAPI, sid: str, **options: Any) -> list[tuple[str, Any, str]]:
    """Run a batch to its end: (status, exitCode, output text) per response that ends a step."""
    run_id = uuid.uuid4().hex
    opts = {"clean": None, "build": None, "exec": None, "buildLog": False, **options}
    result = await api.execute(sid, "batch", "", run_id, options=opts)
    steps, text = [], ""
    while True:
        text += "".join(r[1] for r in result["console"])
        if result["status"] != "continued":
            steps.append((result["status"], result["exitCode"], text))
            text = ""
        if result["status"] == "finished":
            return steps
        result = await api.execute(sid, "continue", "", run_id)


async def test_batch_steps_and_exit_codes(api: RawAPI, sid: str) -> None:
    status, _ = await api.upload(sid, {"data/in.txt": b"payload"}, quote=True)
    assert status == 204
    script = "import sys; print(sys.argv[1:], open('data/in.txt').read())"
    await api.run(sid, f"open('mycode.py', 'w').write({script!r})")
    steps = await batch(
        api, sid, clean="echo cleaning", build="*", exec="python mycode.py arg1 arg2"
    )
    assert steps == [
        ("clean-finished", 0, "cleaning\n"),
        ("build-finished", 0, ""),
        ("finished", 0, "['arg1', 'arg2'] payload\n"),
    ]


async def test_failed_build_skips_exec(api: RawAPI, sid: str) -> None:
    steps = await batch(api, sid, build="echo compiling; exit 3", exec="echo never-runs")
    assert [s[:2] for s in steps] == [("clean-finished", 0), ("build-finished", 3),
                                      ("finished", 127)]  # fmt: skip
    assert steps[1][2] == "compiling\n"
    assert "never-runs" not in steps[2][2] and "exec skipped" in steps[2][2]


async def test_star_defaults(api: RawAPI, sid: str) -> None:
    steps = await batch(api, sid, clean="*", build="*", exec="*")
    assert steps[-1][:2] == ("finished", 127) and "no main.py" in steps[-1][2]
    await api.run(sid, "open('Makefile', 'w').write('all:\\n\\techo made\\n')\n"
                       "open('main.py', 'w').write('print(\"main ran\")')")  # fmt: skip
    steps = await batch(api, sid, clean="*", build="*", exec="*")
    assert steps == [("clean-finished", 0, ""), ("build-finished", 0, "echo made\nmade\n"),
                     ("finished", 0, "main ran\n")]  # fmt: skip


async def test_interrupt_stops_the_running_command(api: RawAPI, sid: str) -> None:
    run_id = uuid.uuid4().hex
    opts = {"exec": "echo started; sleep 30; echo not-reached"}
    result = await api.execute(sid, "batch", "", run_id, options=opts)
    text = "".join(r[1] for r in result["console"])
    while "started" not in text:
        result = await api.execute(sid, "continue", "", run_id)
        text += "".join(r[1] for r in result["console"])
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, _ = await api.call("POST", f"/session/{sid}/interrupt")
    assert status == 204
    while result["status"] != "finished":
        result = await api.execute(sid, "continue", "", run_id)
        text += "".join(r[1] for r in result["console"])
    assert loop.time() - started < 5
    assert result["exitCode"] == 130 and "not-reached" not in text
    records, _ = await api.run(sid, "print('kernel fine')")
    assert records == [["stdout", "kernel fine\n"]]
