"""``remote-kernel demo`` end to end: a real server, the real proxy kernel, nbclient, cleanup."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def demo_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Environment for a demo subprocess whose temp dirs all live under ``tmp_path/tmp``."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ)
    env.update(
        TMPDIR=str(tmpdir),
        PYTHONUNBUFFERED="1",
        JUPYTER_DATA_DIR=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    for var in ("BACKEND_ENDPOINT", "BACKEND_ACCESS_KEY", "BACKEND_SECRET_KEY", "JUPYTER_PATH"):
        env.pop(var, None)
    return env, tmpdir


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (the demo's temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def assert_nothing_left(tmpdir: Path) -> None:
    deadline = time.monotonic() + 10
    while processes_mentioning(str(tmpdir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_mentioning(str(tmpdir)) == []
    assert list(tmpdir.iterdir()) == []  # every temp dir removed


def outputs_by_id(nb: nbformat.NotebookNode) -> dict[str, list[dict]]:
    return {cell["id"]: cell.get("outputs", []) for cell in nb.cells}


@pytest.mark.skipif(sys.platform == "win32", reason="reads /proc")
def test_demo_runs_the_tour(tmp_path):
    env, tmpdir = demo_env(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "remote_kernel", "demo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Server at http://127.0.0.1:" in done.stdout
    assert "code cells" in done.stdout and "outputs (" in done.stdout
    assert "Next steps" in done.stdout and " serve --port 8090" in done.stdout

    nb = nbformat.read(cwd / "tour.executed.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "remote-python"  # what users have installed
    assert nb.metadata["language_info"]["name"] == "python"
    outs = outputs_by_id(nb)

    streams = {o["name"]: o["text"] for o in outs["tour-02"] if o["output_type"] == "stream"}
    assert streams["stdout"] == "hello from the remote kernel\n"
    assert "this line goes to stderr" in streams["stderr"]

    [result] = outs["tour-04"]
    assert result["output_type"] == "execute_result"
    assert "'answer': 42" in result["data"]["text/plain"]

    html, markdown = outs["tour-06"]
    assert html["output_type"] == "display_data" and "<b>Rich</b>" in html["data"]["text/html"]
    assert "text/markdown" in markdown["data"]

    [progress] = outs["tour-08"]  # updated in place by display_id
    assert progress["output_type"] == "display_data"
    assert progress["data"]["text/plain"] == "'step 3 of 3'"

    [error] = outs["tour-10"]
    assert error["output_type"] == "error"
    assert error["ename"] == "ZeroDivisionError"
    assert any("ratio" in line for line in error["traceback"])

    images = [o for o in outs["tour-12"] if "image/png" in o.get("data", {})]
    assert len(images) == 1 and images[0]["output_type"] == "display_data"
    assert base64.b64decode(images[0]["data"]["image/png"]).startswith(b"\x89PNG")

    assert outs["tour-14"][0]["text"] == "total = 45\n"
    assert_nothing_left(tmpdir)


@pytest.mark.skipif(sys.platform == "win32", reason="reads /proc")
def test_demo_failing_cell_exits_nonzero_and_cleans_up(tmp_path):
    env, tmpdir = demo_env(tmp_path)
    notebook = tmp_path / "broken.ipynb"
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("print('before')"),
            nbformat.v4.new_code_cell("undefined_name_xyz"),
        ]
    )
    nbformat.write(nb, notebook)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "remote_kernel",
            "demo",
            f"--notebook={notebook}",
            "--output=o.ipynb",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "A cell failed" in done.stderr and "NameError" in done.stderr
    assert "remote_kernel/demo.py" not in done.stderr  # a message, not a crash of the demo
    executed = nbformat.read(tmp_path / "o.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "before\n"
    assert_nothing_left(tmpdir)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and /proc")
def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_demo_ctrl_c_stops_everything(tmp_path):
    env, tmpdir = demo_env(tmp_path)
    notebook = tmp_path / "slow.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time; time.sleep(60)")])
    nbformat.write(nb, notebook)
    proc = subprocess.Popen(
        [sys.executable, "-m", "remote_kernel", "demo", f"--notebook={notebook}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a suite started as a background job (`cmd &` in a script) has
        # SIGINT ignored, which children inherit, and then Ctrl-C could not reach the demo
        preexec_fn=_default_sigint,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Remote kernel ready" in line:
                break
        time.sleep(1.0)  # the cell is running remotely now
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out + err
    assert "Interrupted" in err
    assert_nothing_left(tmpdir)
