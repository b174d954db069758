"""safe_fs: what a session plants in its own directory cannot redirect the server's file I/O."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from remote_kernel.server.safe_fs import (
    AtomicWrite,
    ConfinementError,
    confined_dir,
    fd_path,
    open_confined,
)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    work = tmp_path / "work"
    outside = tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    return work, outside


def test_open_confined_reads_inside(tree: tuple[Path, Path]) -> None:
    work, _ = tree
    (work / "a.txt").write_text("mine")
    fd = open_confined(work / "a.txt", [work])
    with os.fdopen(fd, "rb") as fh:
        assert fh.read() == b"mine"


def test_open_confined_refuses_links_out(tree: tuple[Path, Path]) -> None:
    work, outside = tree
    (work / "link.txt").symlink_to(outside / "secret.txt")
    with pytest.raises(ConfinementError, match=r"'link\.txt' is a symbolic link; not followed"):
        open_confined(work / "link.txt", [work])
    # a parent directory swapped for a link: the opened file is outside, so it is refused
    (work / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfinementError, match="leads out of the session's directories"):
        open_confined(work / "sub" / "secret.txt", [work])


def test_open_confined_allows_mounted_folders(tree: tuple[Path, Path]) -> None:
    work, outside = tree
    (work / "data").symlink_to(outside, target_is_directory=True)  # a mount link
    fd = open_confined(work / "data" / "secret.txt", [work, outside])
    try:
        assert fd_path(fd) == str(outside / "secret.txt")
    finally:
        os.close(fd)


def test_confined_dir_creates_and_refuses_links(tree: tuple[Path, Path]) -> None:
    work, outside = tree
    fd = confined_dir(work, ["a", "b"], create=True)
    try:
        assert fd_path(fd) == str(work / "a" / "b")
    finally:
        os.close(fd)
    (work / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfinementError, match="'evil' is a symbolic link or not a directory"):
        confined_dir(work, ["evil", "x"], create=True)
    assert not (outside / "x").exists()
    with pytest.raises(FileNotFoundError):
        confined_dir(work, ["missing"], create=False)


def test_atomic_write_ignores_a_planted_temporary_link(tree: tuple[Path, Path]) -> None:
    work, outside = tree
    # the session plants links where an upload's temporary file or target might be
    (work / ".report.txt.uploading").symlink_to(outside / "secret.txt")
    (work / "report.txt").symlink_to(outside / "secret.txt")
    dfd = confined_dir(work, [], create=False)
    try:
        writer = AtomicWrite(dfd, "report.txt")
        writer.file.write(b"uploaded")
        writer.commit()
    finally:
        os.close(dfd)
    assert (outside / "secret.txt").read_text() == "host secret"  # untouched
    assert not (work / "report.txt").is_symlink()  # the link was replaced, not followed
    assert (work / "report.txt").read_bytes() == b"uploaded"
    assert sorted(p.name for p in work.iterdir()) == [".report.txt.uploading", "report.txt"]


def test_atomic_write_abort_leaves_nothing(tree: tuple[Path, Path]) -> None:
    work, _ = tree
    dfd = confined_dir(work, [], create=False)
    try:
        writer = AtomicWrite(dfd, "x.bin")
        writer.file.write(b"partial")
        writer.abort()
    finally:
        os.close(dfd)
    assert list(work.iterdir()) == []
    with pytest.raises(ConfinementError):
        AtomicWrite(0, "../x")
