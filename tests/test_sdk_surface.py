"""Acceptance: batch mode, files and streams through the official Backend.AI SDK.

Same harness as ``tests/test_sdk.py``: every scenario runs in the SDK's own cached venv
(``backend.ai-client 23.9.10`` on Python 3.11 and ``26.9.6`` on Python 3.13) as a subprocess of
``tests/sdk/scenarios.py`` against a real ``remote-kernel serve``, and prints one JSON result.

- ``batch_files``: ``upload([...], basedir=...)`` of ``mycode.py`` and ``data/input.txt``; the
  documented batch example (``clean: "*"``, ``build: "*"``, ``exec: "python mycode.py arg1
  arg2"``) looped on ``continue`` through ``clean-finished`` → ``build-finished`` → ``finished``;
  a batch whose build fails (exec skipped, exitCode 127); ``list_files``; ``download``.
- ``stream_execute_input``: WebSocket execute with ``input()`` answered by a plain text frame.
- ``stream_pty``: a shell command typed into the PTY WebSocket.
- ``listen_events``: the SSE stream sees ``session_terminated`` and stops at ``server_close``.
- ``vfolders``: ``VFolder.create`` / ``list`` / ``info`` / ``delete`` and a session mounting the
  folder; the second keypair can neither see, mount nor delete it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ServerProcess, start_server
from .test_sdk import Sdk, non_continued, plain, run_scenario
from .test_sdk import sdk as sdk  # the same parametrized fixture (one venv per SDK version)

pytestmark = [pytest.mark.sdk, pytest.mark.slow, pytest.mark.timeout(300)]

# What tests/sdk/scenarios.py uploads (MYCODE, INPUT_TXT) and what mycode.py prints and writes.
INPUT_SIZE = len(b"forty two\n")
BATCH_STDOUT = "args: arg1 arg2\ndata: forty two\n"
# An IPython startup file for the kernels of ``slow_finish_server``: after every cell, send the
# cell's output, then wait before the kernel replies. A run's output and its end then always come
# back in two responses (``continued`` with the output, then ``finished``): the split that a busy
# machine makes happen now and then (the server waits ``poll_coalesce``, 5 ms, for the end).
SLOW_FINISH_STARTUP = """
import sys, time

def _send_output_then_wait(result):
    sys.stdout.flush()
    time.sleep(0.5)

get_ipython().events.register("post_run_cell", _send_output_then_wait)
"""


@pytest.fixture
def run(sdk: Sdk, server: Any, tmp_path: Path):
    def _run(scenario: str) -> dict[str, Any]:
        return run_scenario(sdk, server, scenario, tmp_path)

    return _run


@pytest.fixture(scope="module")
def slow_finish_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Like ``server``, but its kernels answer 0.5 s after sending a cell's output.

    The kernels get the hook from a ``python3`` kernelspec of the test's own (first on
    JUPYTER_PATH) that runs a file from its resource directory at start: kernels see neither
    the server's environment nor its IPython directory.
    """
    base = tmp_path_factory.mktemp("slow-finish")
    spec = base / "share" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "slow_finish.py").write_text(SLOW_FINISH_STARTUP)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.exec_files={resource_dir}/slow_finish.py"],
        "display_name": "Python 3 (slow finish)", "language": "python",
    }))  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(base / "share"))
        srv = start_server(base, keys=2)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def batch_files(sdk: Sdk, server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One session: upload, two batches, listings and a download (asserted by several tests)."""
    return run_scenario(sdk, server, "batch_files", tmp_path_factory.mktemp(f"batch-{sdk.major}"))


def listing(response: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``list_files``' ``files`` is a JSON string; decode it to ``{filename: entry}``."""
    assert isinstance(response["files"], str), response
    entries = json.loads(response["files"])
    assert isinstance(entries, list)
    by_name = {entry["filename"]: entry for entry in entries}
    assert len(by_name) == len(entries)
    return by_name


# -- batch mode ----------------------------------------------------------------------------------
def test_batch_example_runs_uploaded_code(batch_files):
    out = batch_files["batch"]
    assert non_continued(out["statuses"]) == ["clean-finished", "build-finished", "finished"]
    assert out["statuses"][-1] == "finished"
    assert out["steps"] == [
        {"status": "clean-finished", "exitCode": 0, "stdout": "", "stderr": ""},
        {"status": "build-finished", "exitCode": 0, "stdout": "", "stderr": ""},
        {"status": "finished", "exitCode": 0, "stdout": BATCH_STDOUT, "stderr": ""},
    ]


def test_failed_build_skips_exec(batch_files):
    out = batch_files["failed_build"]
    assert non_continued(out["statuses"]) == ["clean-finished", "build-finished", "finished"]
    clean, build, finished = out["steps"]
    assert clean == {"status": "clean-finished", "exitCode": 0, "stdout": "", "stderr": ""}
    assert build == {"status": "build-finished", "exitCode": 3, "stdout": "", "stderr": ""}
    assert (finished["status"], finished["exitCode"]) == ("finished", 127)
    assert finished["stdout"] == ""  # mycode.py never ran
    assert "args:" not in finished["stderr"] and "data:" not in finished["stderr"]
    assert batch_files["failed_build"]["runId"] != batch_files["batch"]["runId"]


# -- files ---------------------------------------------------------------------------------------
def test_list_files_shows_uploads_and_written_file(batch_files):
    top = batch_files["list_top"]
    assert (top["errors"], top["abspath"]) == ("", ".")
    entries = listing(top)
    assert sorted(entries) == ["data", "mycode.py", "result.txt"]
    assert entries["data"]["mode"].startswith("d")
    assert entries["mycode.py"]["mode"].startswith("-")
    assert entries["mycode.py"]["size"] == batch_files["local_sizes"]["mycode.py"]
    assert entries["result.txt"]["size"] == len(b"FORTY TWO\n")
    for entry in entries.values():
        assert {"filename", "size", "mode", "mtime"} <= set(entry)

    sub = batch_files["list_data"]
    assert (sub["errors"], sub["abspath"]) == ("", "data")
    data_entries = listing(sub)
    assert list(data_entries) == ["input.txt"]
    assert data_entries["input.txt"]["size"] == INPUT_SIZE
    assert batch_files["local_sizes"]["input.txt"] == INPUT_SIZE


def test_download_file_the_session_wrote(batch_files):
    assert batch_files["downloaded"] == {"file_names": ["result.txt"]}
    assert batch_files["contents"] == {"result.txt": "FORTY TWO\n"}


# -- streams (AsyncSession only) -----------------------------------------------------------------
def test_stream_execute_answers_input_over_the_socket(run):
    check_stream_execute_input(run("stream_execute_input"))


def test_stream_execute_input_when_output_and_end_come_apart(sdk, slow_finish_server, tmp_path):
    """The same, with each run's output and its end in separate responses, every time."""
    out = run_scenario(sdk, slow_finish_server, "stream_execute_input", tmp_path)
    statuses = [f["status"] for f in out["frames"]]
    assert statuses == ["waiting-input", "continued", "finished"]  # the split did happen
    check_stream_execute_input(out)
    assert out["after"]["statuses"] == ["continued", "finished"]  # and in the follow-up run


def check_stream_execute_input(out: dict[str, Any]) -> None:
    frames = out["frames"]
    assert all(isinstance(frame, dict) for frame in frames), frames  # no close/error frame
    assert non_continued([f["status"] for f in frames]) == ["waiting-input", "finished"]
    assert frames[-1]["status"] == "finished"
    waiting = next(f for f in frames if f["status"] == "waiting-input")
    assert waiting["options"] == {"is_password": False}
    assert all("runId" not in frame for frame in frames)
    console = [rec for frame in frames for rec in frame["console"]]
    assert console == [["stdout", "Your name: "], ["stdout", "hello Ada!\n"]]
    assert frames[-1]["exitCode"] == 0
    assert out["closed"] is True  # the server closed the socket after finished
    after = out["after"]  # the kernel kept the answer
    assert (after["status"], after["exitCode"], after["console"]) == (
        "finished",
        0,
        [["stdout", "Ada\n"]],
    )


def test_stream_pty_echoes_shell_output(run):
    out = run("stream_pty")
    assert out["kinds"] and set(out["kinds"]) == {"out"}
    lines = [line.strip() for line in plain(out["text"]).splitlines()]
    assert "hi-3" in lines
    # the scenario stops reading once the output line arrives: at most the next prompt follows
    assert all(line.endswith(("$", "#")) for line in lines[lines.index("hi-3") + 1 :]), lines


def test_listen_events_sees_destroy_and_stops_at_server_close(run, sdk):
    out = run("listen_events")
    events = out["events"]
    names = [e["event"] for e in events]
    assert names == ["session_terminating", "kernel_terminated", "session_terminated",
                     "server_close"]  # fmt: skip
    assert out["iterator_stopped"] is True
    assert out["elapsed"] < 10.0
    terminated = events[2]["data"]
    assert terminated["sessionId"] == out["session_id"]
    assert terminated["sessionName"].startswith(f"sdk{sdk.major}-listen-events-")
    assert terminated["reason"] == "user-requested"
    assert "exitCode" in terminated
    for event in events:
        assert event["data"]["sessionId"] == out["session_id"]
    assert out["destroyed"]["stats"] == {"status": "terminated"}


# -- folders ---------------------------------------------------------------------------------------
def test_vfolders_create_list_mount_delete(run):
    out = run("vfolders")
    folder = out["folder"]
    assert out["created"]["name"] == folder and out["created"]["id"]
    assert out["listed"] == [folder]
    assert out["info"]["name"] == folder and out["info"]["id"] == out["created"]["id"]
    assert out["run"]["stdout"] == "['hello.txt']\n"
    assert out["other_listed"] == []
    for attempt in ("other_info", "other_mount", "other_delete"):
        error = out[attempt]["api_error"]
        assert error["status"] == 404, (attempt, error)
        assert error["data"]["data"] == {"available": []}, (attempt, error)  # names nothing
    assert out["info_after"]["num_files"] == 1
    assert out["deleted"] == {}
    assert out["listed_after"] == []
    assert out["mount_deleted"]["api_error"]["status"] == 404
