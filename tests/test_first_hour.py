"""The first hour of a new user: the README, the quick start, the demo's last words and the
server's banner agree, and each tells what to run next."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from remote_kernel.demo import next_steps
from remote_kernel.server.app import connect_hint

ROOT = Path(__file__).resolve().parent.parent


def _fresh_machine_commands(markdown: str) -> list[str]:
    section = markdown.split("## On a fresh machine", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_has_exactly_two_commands_and_the_quick_start_repeats_them() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = _fresh_machine_commands(readme)
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert commands[0].endswith(".venv/bin/remote-kernel demo")
    assert commands[1].endswith(".venv/bin/python -m pytest")
    quickstart = (ROOT / "docs" / "quickstart.md").read_text()
    for command in commands:
        assert command in quickstart, f"docs/quickstart.md lacks the README's {command!r}"
    assert "second terminal" in readme and "second terminal" in quickstart


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in ci


def test_demo_ends_with_next_steps() -> None:
    text = next_steps("remote-kernel")
    assert "Next steps" in text and "second terminal" in text
    for line in (
        "remote-kernel keys create",
        "remote-kernel serve --port 8090",
        "export BACKEND_ENDPOINT=http://127.0.0.1:8090",
        'remote-kernel install --display-name "Python (remote)"',
        "jupyter execute --kernel_name=remote-python",
    ):
        assert line in text
    assert ".venv/bin/jupyter execute" in next_steps(".venv/bin/remote-kernel")


def test_connect_hint_names_the_address_a_client_can_reach() -> None:
    hint = connect_hint("http://0.0.0.0:8090", "keypair", 0, "/s")
    assert "export BACKEND_ENDPOINT=http://0.0.0.0" not in hint
    assert "no keypairs yet" in hint and "keys create --state-dir /s" in hint
    anonymous = connect_hint("http://127.0.0.1:9", "none", 0, "/s")
    assert "export BACKEND_ENDPOINT=http://127.0.0.1:9 " in anonymous
    assert "BACKEND_ACCESS_KEY" not in anonymous


def test_serve_says_where_it_listens_and_how_to_connect(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "remote_kernel", "serve", "--ip", "127.0.0.1", "--port", "0",
         "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops it" in line:
                break
        banner = "".join(lines)
        url = re.search(r"serving on (http://127\.0\.0\.1:\d+)", banner)
        assert url, banner
        assert "no keypairs yet" in banner
        assert f"export BACKEND_ENDPOINT={url.group(1)} BACKEND_ACCESS_KEY=" in banner
        assert 'install --display-name "Python (remote)"' in banner
    finally:
        proc.terminate()
        proc.wait(30)
