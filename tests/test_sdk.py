"""Acceptance: the official Backend.AI SDK's documented examples against `remote-kernel serve`.

Each SDK release runs in its own cached venv (``tests/sdk/venvs.py``): ``backend.ai-client
23.9.10`` (with ``yarl<1.13``) on Python 3.11 and, where a working Python 3.13 exists,
``backend.ai-client 26.9.6``. The SDK code runs as a subprocess (``tests/sdk/scenarios.py``) in
a fresh temporary directory (the SDK reads a ``.env`` from its working directory) with only the
SDK's own ``BACKEND_*`` variables for configuration, and prints one JSON line per scenario.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def _load_venvs():  # tests/ is not a package; load the helper by path
    spec = importlib.util.spec_from_file_location(
        "rk_sdk_venvs", Path(__file__).parent / "sdk" / "venvs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


venvs = _load_venvs()
pytestmark = [pytest.mark.sdk, pytest.mark.slow, pytest.mark.timeout(300)]

SCENARIOS = Path(__file__).parent / "sdk" / "scenarios.py"
IMAGE = "python:3.9-ubuntu20.04"
PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42"
    "mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PROBS = "https://api.backend.ai/probs/"
SCENARIO_TIMEOUT = 150
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def plain(text: str) -> str:
    return _ANSI.sub("", text)


@dataclass(frozen=True)
class Sdk:
    version: str
    python: Path

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


@pytest.fixture(scope="module", params=list(venvs.SDK_SPECS), ids=lambda v: f"sdk-{v}")
def sdk(request: pytest.FixtureRequest) -> Sdk:
    """The SDK's venv, built once and cached; 26.x is skipped only where Python 3.13 is absent."""
    spec = venvs.SDK_SPECS[request.param]
    python = venvs.find_python(spec.python)
    if python is None:
        if spec.python == (3, 13):
            pytest.skip(
                f"no working python3.13 found (SDK {request.param} needs Python >=3.13,<3.14)"
            )
        pytest.fail(f"no working {spec.python_name} found to build SDK {request.param}")
    return Sdk(request.param, venvs.venv_python(venvs.ensure_venv(spec, python)))


def session_name(sdk: Sdk, scenario: str) -> str:
    return f"sdk{sdk.major}-{scenario.replace('_', '-')}-{uuid.uuid4().hex[:8]}"


def run_scenario(
    sdk: Sdk, server: Any, scenario: str, cwd: Path, **env_overrides: str
) -> dict[str, Any]:
    """Run one scenario in the SDK venv; return its JSON result."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BACKEND_", "SORNA_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(server.env)
    other_access, other_secret = server.extra_keys[0]
    env.update(RK_OTHER_ACCESS_KEY=other_access, RK_OTHER_SECRET_KEY=other_secret)
    env.update(env_overrides)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.run(
        [str(sdk.python), str(SCENARIOS), scenario, session_name(sdk, scenario)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or len(lines) != 1:
        raise AssertionError(
            f"scenario {scenario!r} with SDK {sdk.version} failed (exit {proc.returncode})\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}\n"
            f"--- server log\n{server.log()[-4000:]}"
        )
    result: dict[str, Any] = json.loads(lines[0][len("RESULT ") :])
    assert "api_error" not in result or scenario in ("wrong_secret",), result
    return result


@pytest.fixture
def run(sdk: Sdk, server: Any, tmp_path: Path):
    def _run(scenario: str, **env_overrides: str) -> dict[str, Any]:
        return run_scenario(sdk, server, scenario, tmp_path, **env_overrides)

    return _run


def non_continued(statuses: list[str]) -> list[str]:
    """The statuses that matter: ``continued`` may appear any number of times while a run works."""
    return [s for s in statuses if s != "continued"]


# -- the run loop -------------------------------------------------------------------------------
def test_query_loop_prints_hello_world(run, sdk):
    out = run("hello")
    assert out["created"] is True
    assert out["status"] == "RUNNING"
    assert str(uuid.UUID(out["session_id"])) == out["session_id"]
    assert out["api_version"] == ([7, "20230615"] if sdk.major == 23 else [9, "20250722"])
    run_ = out["run"]
    assert run_["status"] == "finished"
    assert run_["exitCode"] == 0
    assert non_continued(run_["statuses"]) == ["finished"]
    assert run_["console"] == [["stdout", "hello world\n"]]
    assert run_["stdout"] == "hello world\n"
    assert re.fullmatch(r"[0-9a-f]{32}", run_["runId"])
    assert isinstance(out["destroyed"], dict)
    assert isinstance(out["destroyed"]["stats"], dict)


def test_query_loop_with_async_session(run):
    out = run("hello_async")
    assert out["stdout"] == "hello world\n"
    assert non_continued(out["statuses"]) == ["finished"]
    assert out["exitCode"] == 0


def test_user_input_and_getpass(run):
    out = run("user_input")["run"]
    assert non_continued(out["statuses"]) == ["waiting-input", "waiting-input", "finished"]
    assert out["waits"] == [
        {"is_password": False, "text": "Your name: "},
        {"is_password": True, "text": "Password: "},
    ]
    assert out["stdout"] == "Your name: Password: hi Ada, 7 chars\n"
    assert out["stderr"] == ""
    assert out["exitCode"] == 0


def test_error_cell(run):
    out = run("error")
    failing = out["run"]
    assert failing["status"] == "finished"
    assert failing["exitCode"] == 1
    assert failing["stdout"] == "before\n"
    stderr = plain(failing["stderr"])
    assert "Traceback (most recent call last)" in stderr
    assert stderr.rstrip("\n").splitlines()[-1] == (
        "NameError: name 'undefined_name_xyz' is not defined"
    )
    assert [r[0] for r in failing["console"]] == ["stdout", "stderr"]
    after = out["after"]
    assert (after["status"], after["exitCode"], after["console"]) == (
        "finished",
        0,
        [["stdout", "still alive\n"]],
    )


def test_media_as_data_uri(run):
    out = run("media")
    assert out["png"]["exitCode"] == 0
    assert out["png"]["console"] == [["media", ["image/png", f"data:image/png;base64,{PNG_B64}"]]]
    assert out["svg"]["console"] == [
        [
            "media",
            ["image/svg+xml", '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>'],
        ]
    ]
    [[kind, [mime, uri]]] = out["plot"]["console"]
    assert (kind, mime) == ("media", "image/png")
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    assert base64.b64decode(uri[len(prefix) :], validate=True).startswith(b"\x89PNG\r\n\x1a\n")


def test_interrupt_sleep_keeps_state(run):
    out = run("interrupt")
    assert "error" not in out, out
    assert out["status"] == "finished"
    assert out["exitCode"] == 1
    assert out["statuses"][-1] == "finished"
    assert set(out["statuses"][:-1]) == {"continued"}
    assert out["drained_after_interrupt"] < 5.0
    assert out["stdout"] == ""
    assert plain(out["stderr"]).rstrip().splitlines()[-1].startswith("KeyboardInterrupt")
    after = out["after"]
    assert (after["status"], after["exitCode"], after["console"]) == (
        "finished",
        0,
        [["stdout", "42\n"]],
    )


def test_completion(run):
    out = run("complete")
    assert out["setup"]["exitCode"] == 0
    for key, expected in (("module", "os"), ("attribute", "path")):
        result = out[key]["result"]
        assert result["status"] == "finished"
        assert result["error"] is None
        assert isinstance(result["suggestions"], list)
        assert expected in result["suggestions"], (key, result)


def test_get_info_and_get_logs(run):
    out = run("info_logs")
    assert out["run"]["stdout"] == "logged\n"
    info = out["info"]
    assert info["status"] == "RUNNING"
    assert info["image"] == IMAGE
    assert isinstance(info["creationTime"], str)
    assert isinstance(info["numQueriesExecuted"], int)
    assert info["numQueriesExecuted"] >= 1
    logs = out["logs"]
    assert list(logs) == ["result"]
    assert isinstance(logs["result"]["logs"], str)


def test_restart_clears_state_keeps_files(run):
    out = run("restart")
    assert out["before"]["console"] == [["stdout", "42\n"]]
    assert out["restart_returned"] is None
    state = out["state"]
    assert state["status"] == "finished"
    assert state["exitCode"] == 1
    assert plain(state["stderr"]).rstrip().splitlines()[-1] == (
        "NameError: name 'x' is not defined"
    )
    files = out["files"]
    assert (files["exitCode"], files["console"]) == (0, [["stdout", "kept across restart\n"]])
    assert out["info_status"] == "RUNNING"


def test_reuse_by_name(run):
    out = run("reuse")
    first, second = out["first"], out["second"]
    assert first["created"] is True
    assert second["created"] is False
    assert second["id"] == first["id"]
    assert (first["status"], second["status"]) == ("RUNNING", "RUNNING")
    assert out["marker"]["console"] == [["stdout", "same kernel\n"]]
    conflict = out["other_image"]
    assert conflict["status"] == 400
    assert conflict["data"]["type"] == PROBS + "session-already-exists"


def test_destroy_then_404(run):
    out = run("destroy")
    assert isinstance(out["destroyed"]["stats"], dict)
    for key in ("info_after", "execute_after"):
        err = out[key]
        assert (err["status"], err["args0"]) == (404, 404), (key, err)
        assert err["data"]["type"] == PROBS + "object-not-found"
    assert out["recreated"] == {"created": True, "same_id": False}


def test_abandoned_run_does_not_wedge_the_session(run):
    out = run("abandon")
    assert out["first_status"] == "continued"
    second = out["second"]
    assert (second["status"], second["exitCode"]) == ("finished", 0)
    assert second["stdout"].endswith("second\n")
    assert out["second_elapsed"] < 10.0


def test_files_upload_list_download(run):
    out = run("files")
    assert out["read"]["console"] == [["stdout", "top level\nnested file\n"]]
    listing = json.loads(out["list_top"]["files"])
    names = {entry["filename"] for entry in listing}
    assert {"data.txt", "sub"} <= names
    assert out["contents"] == {"data.txt": "top level\n", "nested.txt": "nested file\n"}
    assert sorted(out["downloaded"]["file_names"]) == ["data.txt", "nested.txt"]


def test_rejected_uploads_leave_the_connection_usable(run):
    out = run("upload_missing")
    for err in out["errors"]:
        assert err is not None
        assert (err["status"], err["data"]["type"]) == (404, PROBS + "object-not-found"), err
    assert out["run"]["console"] == [["stdout", "usable\n"]]


# -- authentication and ownership ----------------------------------------------------------------
def test_wrong_secret_is_401(run):
    out = run("wrong_secret", BACKEND_SECRET_KEY="x" * 40)
    err = out["api_error"]
    assert (err["status"], err["args0"]) == (401, 401)
    assert err["data"]["type"] == PROBS + "auth-failed"
    assert err["data"]["msg"] == "HMAC signature mismatch"


def test_unknown_access_key_is_401(run):
    out = run("wrong_secret", BACKEND_ACCESS_KEY="AKIA" + "0" * 16)
    err = out["api_error"]
    assert err["status"] == 401
    assert err["data"]["type"] == PROBS + "auth-failed"
    assert err["data"]["msg"] == "HMAC signature mismatch"  # no key enumeration


def test_another_keypair_gets_404(run):
    err = run("other_key")["other_get_info"]
    assert err["status"] == 404
    assert err["data"]["type"] == PROBS + "object-not-found"


# -- the venv builder -----------------------------------------------------------------------------
def test_find_python_probes_by_running():
    assert venvs.find_python((3, 99)) is None
    found = venvs.find_python((3, 11))
    assert found is not None
    out = subprocess.run(
        [found, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "(3, 11)"


def test_venv_dir_depends_on_the_requirements():
    spec = venvs.SDK_SPECS["23.9.10"]
    other = venvs.SdkSpec(spec.name, spec.python, ("backend.ai-client==23.9.10",))
    assert venvs.venv_dir(spec) != venvs.venv_dir(other)
    assert venvs.venv_dir(spec).parent == venvs.CACHE_ROOT
    assert venvs.venv_dir(spec).name.startswith("sdk-23.9.10-")
