"""The ``remote-kernel`` command dispatcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from remote_kernel.cli import main

pytestmark = pytest.mark.timeout(60)


def test_main_twice_in_one_process_starts_afresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "--state-dir", str(tmp_path / "a")]) == 0
    assert main(["list"]) == 0
    assert main(["keys", "create", "--state-dir", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert out.count("BACKEND_ACCESS_KEY=") == 2
    assert (tmp_path / "a" / "keypairs.json").exists()
    assert (tmp_path / "b" / "keypairs.json").exists()


def test_no_subcommand_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    for sub in ("serve", "keys", "install", "list", "remove", "demo"):
        assert sub in out
