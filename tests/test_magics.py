"""The pure parts of ``%remote``: parsing and splitting cells, completion, ``.remoteignore``,
the sync plan, the progress display, safe tar extraction and what an upload sends. No kernel,
no server (the kernel tests are ``test_magics_kernel.py``)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from remote_kernel import kernelspec
from remote_kernel.cli import main
from remote_kernel.errors import ProtocolError, SessionNotFoundError
from remote_kernel.proxy import magics as m
from remote_kernel.proxy import transfer
from remote_kernel.proxy.magics import (
    CodeChunk,
    Download,
    Help,
    Info,
    Ls,
    MagicError,
    MagicLine,
    MagicUsageError,
    PathQuery,
    Sync,
    Upload,
)
from remote_kernel.proxy.progress import Progress, format_size, percent, progress_bundle
from remote_kernel.proxy.sync import (
    IgnoreRules,
    LocalFile,
    RemoteFile,
    Synced,
    SyncLedger,
    parse_mtime,
    plan_down,
    plan_up,
    walk_local,
)
from remote_kernel.proxy.transfer import upload_plan
from remote_kernel.proxy.untar import TarSink, unsafe_reason

pytestmark = pytest.mark.timeout(30)


# -- parsing -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("%remote", Help()),
        ("%remote   ", Help()),
        ("%remote help", Help()),
        ("%remote help sync", Help("sync")),
        ("%remote upload --help", Help("upload")),
        ("%remote upload a.csv", Upload(("a.csv",))),
        ("%remote upload a.csv 'my data' --to data", Upload(("a.csv", "my data"), "data")),
        ("%remote upload a.csv --to=/home/work/out/", Upload(("a.csv",), "out")),
        ("%remote upload a.csv --to .", Upload(("a.csv",), "")),
        ("%remote download out/r.csv", Download(("out/r.csv",))),
        ("%remote download /home/work/r.csv x --to back", Download(("r.csv", "x"), "back")),
        ("%remote ls", Ls()),
        ("%remote ls ./data/", Ls("data")),
        ("%remote ls -a data", Ls("data", True)),
        ("%remote sync", Sync()),
        ("%remote sync --down", Sync(down=True)),
        ("%remote info", Info()),
    ],
)
def test_lines_parse(line: str, command: m.Command) -> None:
    assert m.parse_line(line) == command


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("%remote uplod x",
         "%remote: unknown subcommand 'uplod'; use one of upload, download, ls, sync, info, help."),
        ("%remote upload",
         "%remote upload: the following arguments are required: LOCAL. See `%remote help upload`."),
        ("%remote download --to x",
         "%remote download: the following arguments are required: REMOTE. "
         "See `%remote help download`."),
        ("%remote sync --dow",
         "%remote sync: unrecognized arguments: --dow. See `%remote help sync`."),
        ("%remote info now", "%remote info: unrecognized arguments: now. See `%remote help info`."),
        ("%remote ls ../up", "%remote: '../up' leaves the work directory."),
        ("%remote ls /etc",
         "%remote: '/etc' is not in the work directory; remote paths are relative to it "
         "(/home/work)."),
        ("%remote download .", "%remote: name a file or folder of the work directory."),
        ("%remote ls 'open", "%remote: cannot read \"%remote ls 'open\": No closing quotation."),
        ("%remote help nope",
         "%remote: unknown subcommand 'nope'; use one of upload, download, ls, sync, info, help."),
    ],
)  # fmt: skip
def test_bad_lines_say_what_is_wrong(line: str, message: str) -> None:
    with pytest.raises(MagicUsageError) as info:
        m.parse_line(line)
    assert str(info.value) == message
    assert info.value.ename == "UsageError"


def test_usage_texts() -> None:
    assert m.usage() == m.USAGE
    assert m.usage("sync").startswith("usage: %remote sync [--down]\n")
    for name in m.SUBCOMMANDS:
        assert f"%remote {name}" in m.USAGE


# -- cells -------------------------------------------------------------------------------------
def test_a_cell_splits_into_steps_in_order() -> None:
    code = "x = 1\n%remote upload a.csv\nprint(x)\n\n%remote ls\n\n"
    assert m.has_magic(code)
    assert m.plan_cell(code) == [
        CodeChunk("x = 1"),
        MagicLine(2, "%remote upload a.csv", Upload(("a.csv",))),
        CodeChunk("print(x)\n"),
        MagicLine(5, "%remote ls", Ls()),
    ]
    assert m.history_stub(code) == "# %remote upload a.csv\n# %remote ls"


@pytest.mark.parametrize(
    "code",
    ["print('%remote')", "x = 1  # %remote ls", "%remotely", "%%time\n%remote ls", "%%bash\necho",
     "y = '''\n%remotes\n'''"],
)  # fmt: skip
def test_cells_without_magic_lines_are_left_alone(code: str) -> None:
    assert not m.has_magic(code)


def test_every_line_is_parsed_before_anything_runs() -> None:
    with pytest.raises(MagicUsageError) as info:
        m.plan_cell("print(1)\n%remote ls\n%remote bogus")
    assert str(info.value).startswith("line 3: %remote: unknown subcommand 'bogus'")
    with pytest.raises(MagicUsageError) as info:
        m.plan_cell("for f in files:\n    %remote upload f")
    assert str(info.value).startswith("line 2: %remote must start the line")


# -- completion --------------------------------------------------------------------------------
def _matches(code: str, pos: int | None = None) -> list[str]:
    reply = m.complete(code, len(code) if pos is None else pos)
    assert isinstance(reply, dict)
    return list(reply["matches"])


def test_completion_of_subcommands_and_options() -> None:
    assert _matches("%remote ") == list(m.SUBCOMMANDS)
    reply = m.complete("x = 1\n%remote d", 15)
    assert reply == {"status": "ok", "matches": ["download"], "cursor_start": 14,
                     "cursor_end": 15, "metadata": {}}  # fmt: skip
    assert _matches("%remote sync --") == ["--down"]
    assert _matches("%remote upload a --") == ["--to"]
    assert _matches("%remote help s") == ["sync"]
    assert _matches("%remote info ") == []
    assert m.complete("print(1)", 8) is None
    assert m.complete("%remote ls\nprint(1)", 19) is None  # the cursor is on the code line


def test_completion_of_paths_asks_the_right_side() -> None:
    assert m.complete("%remote upload da", 17) == PathQuery(False, "", "da", 15, 17)
    assert m.complete("%remote upload a --to out/x", 27) == PathQuery(True, "out/", "x", 22, 27)
    assert m.complete("%remote download sub/", 21) == PathQuery(True, "sub/", "", 17, 21)
    assert m.complete("%remote download r --to ", 24) == PathQuery(False, "", "", 24, 24)
    query = PathQuery(True, "sub/", "", 17, 21)
    names = [("b.txt", False), ("a", True), (".hidden", False)]
    reply = m.path_reply(query, names)
    assert reply["matches"] == ["sub/a/", "sub/b.txt"]
    assert m.path_reply(PathQuery(True, "", ".h", 0, 2), names)["matches"] == [".hidden"]


# -- .remoteignore -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rel", "is_dir", "ignored"),
    [
        ("data.csv", False, False),
        (".env", False, True),  # hidden, always
        (".ipynb_checkpoints", True, True),
        ("sub/.cache", True, True),
        ("run.log", False, True),  # *.log
        ("deep/er/run.log", False, True),
        ("keep.log", False, False),  # !keep.log
        ("build", True, True),  # build/ (folders only)
        ("build", False, False),
        ("data/raw", True, True),  # /data/raw: anchored
        ("other/data/raw", True, False),
        ("models/a/b/ckpt.pt", False, True),  # models/**/*.pt
        ("models/ckpt.pt", False, True),
        ("ckpt.pt", False, False),
        ("x1.tmp", False, True),  # x?.tmp
        ("x12.tmp", False, False),
    ],
)
def test_ignore_rules(rel: str, is_dir: bool, ignored: bool) -> None:
    rules = IgnoreRules(
        "# comment\n\n*.log\n!keep.log\nbuild/\n/data/raw\nmodels/**/*.pt\nx?.tmp\n"
    )
    assert rules.ignored(rel, is_dir) is ignored


def test_walk_local_skips_what_sync_skips(tmp_path: Path) -> None:
    for rel in ["a.txt", "sub/b.txt", "sub/run.log", ".hidden", ".ipynb_checkpoints/a.ipynb",
                "build/out.bin", "sub/deep/c.txt"]:  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    (tmp_path / ".remoteignore").write_text("*.log\nbuild/\n")
    os.symlink(tmp_path / "sub", tmp_path / "linked")  # a link to a folder: not followed
    found = walk_local(tmp_path, IgnoreRules.load(tmp_path))
    assert sorted(found) == ["a.txt", "sub/b.txt", "sub/deep/c.txt"]
    assert found["a.txt"].size == 5


# -- the sync plan -----------------------------------------------------------------------------
T0 = 1_700_000_000.0
ISO0 = "2023-11-14T22:13:20+00:00"  # T0
ISO_LATER = "2023-11-14T22:13:30.500000+00:00"  # T0 + 10.5 s


def _local(rel: str, size: int, t: float) -> LocalFile:
    return LocalFile(rel, size, int(t * 1e9))


def test_parse_mtime() -> None:
    assert parse_mtime(ISO0) == T0
    assert parse_mtime("2023-11-14T22:13:20") == T0  # no zone: UTC
    assert parse_mtime("2023-11-14T22:13:20Z") == T0
    assert parse_mtime("yesterday") is None


def test_sync_up_without_records_sends_new_and_newer_files() -> None:
    local = {
        "new.txt": _local("new.txt", 3, T0),
        "same.txt": _local("same.txt", 3, T0),
        "edited.txt": _local("edited.txt", 3, T0 + 60),  # newer here
        "older.txt": _local("older.txt", 9, T0 - 60),  # the remote's is newer: left alone
        "resized.txt": _local("resized.txt", 4, T0),  # same time, other size
    }
    remote = {rel: RemoteFile(rel, 3, ISO0) for rel in
              ["same.txt", "edited.txt", "older.txt", "resized.txt", "only-there.txt"]}  # fmt: skip
    send, unchanged = plan_up(local, remote, {})
    assert [f.rel for f in send] == ["edited.txt", "new.txt", "resized.txt"]
    assert unchanged == ["older.txt", "same.txt"]


def test_sync_records_make_clocks_irrelevant() -> None:
    mine = _local("a.txt", 3, T0)
    theirs = RemoteFile("a.txt", 3, ISO_LATER)  # uploaded after the local edit
    records = {"a.txt": SyncLedger.record(mine, theirs)}
    assert plan_up({"a.txt": mine}, {"a.txt": theirs}, records) == ([], ["a.txt"])
    assert plan_down({"a.txt": theirs}, {"a.txt": mine}, records) == ([], ["a.txt"])
    # without the record, down would take the (later) remote copy for a change
    assert plan_down({"a.txt": theirs}, {"a.txt": mine}, {})[0] == [theirs]
    edited = _local("a.txt", 3, T0 + 1)
    assert plan_up({"a.txt": edited}, {"a.txt": theirs}, records)[0] == [edited]
    rewritten = RemoteFile("a.txt", 3, "2023-11-14T22:14:00+00:00")
    assert plan_down({"a.txt": rewritten}, {"a.txt": mine}, records)[0] == [rewritten]
    # the other side's change is not this direction's business
    assert plan_up({"a.txt": mine}, {"a.txt": rewritten}, records)[0] == []


def test_sync_down_without_records() -> None:
    remote = {
        "new.txt": RemoteFile("new.txt", 1, ISO0),
        "same.txt": RemoteFile("same.txt", 1, ISO0),
        "tar-rounded.txt": RemoteFile("tar-rounded.txt", 1, "2023-11-14T22:13:20.900000+00:00"),
        "changed.txt": RemoteFile("changed.txt", 2, ISO_LATER),
    }
    local = {rel: _local(rel, 1, T0) for rel in ["same.txt", "tar-rounded.txt", "changed.txt"]}
    fetch, unchanged = plan_down(remote, local, {})
    assert [f.rel for f in fetch] == ["changed.txt", "new.txt"]
    assert unchanged == ["same.txt", "tar-rounded.txt"]


def test_the_ledger_is_per_session() -> None:
    ledger = SyncLedger()
    ledger.of("s1")["a"] = Synced((1, 1), (1, "t"))
    assert ledger.of("s1") == {"a": Synced((1, 1), (1, "t"))}
    assert ledger.of("s2") == {}


# -- the progress display ----------------------------------------------------------------------
def test_sizes_and_percentages() -> None:
    assert [format_size(n) for n in (0, 1023, 1024, 1536, 200 * 1000**2, 3 * 1024**3)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "190.7 MiB", "3.0 GiB"]  # fmt: skip
    assert [percent(d, 200) for d in (0, 1, 199, 200)] == [0, 0, 99, 100]
    assert percent(0, 0) == 100 and percent(5, None) is None
    bundle = progress_bundle("Uploading 1 file", 512, 1024, None)
    assert bundle["text/plain"] == "Uploading 1 file: 50% (512 B of 1.0 KiB)"
    assert bundle["text/html"] == (
        '<div><progress value="50" max="100" style="width: 20em"></progress> '
        "Uploading 1 file: 50% (512 B of 1.0 KiB)</div>"
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_shows_after_a_second_updates_in_place_and_ends_at_100() -> None:
    sent: list[tuple[str, dict]] = []
    clock = Clock()
    progress = Progress(lambda t, c: sent.append((t, c)), "Up", 1000, clock=clock)
    progress.update(100)
    clock.now += 0.5
    progress.update(300)
    assert sent == []  # not yet a second
    clock.now += 0.6
    progress.update(400)
    clock.now += 0.1
    progress.update(500)  # within 0.25 s of the last: not sent
    clock.now += 0.2
    progress.update(600)
    progress.finish()
    kinds = [t for t, _ in sent]
    assert kinds == ["display_data", "update_display_data", "update_display_data"]
    ids = {c["transient"]["display_id"] for _, c in sent}
    assert ids == {progress.display_id}
    texts = [c["data"]["text/plain"].split(" (")[0] for _, c in sent]
    assert texts == ["Up: 40%", "Up: 60%", "Up: 100%"]


def test_a_quick_transfer_shows_no_progress() -> None:
    sent: list[tuple[str, dict]] = []
    clock = Clock()
    progress = Progress(lambda t, c: sent.append((t, c)), "Up", 10, clock=clock)
    progress.update(10)
    clock.now += 0.9
    progress.finish()
    assert sent == []


# -- safe extraction ---------------------------------------------------------------------------
def _tar(*members: tuple[str, bytes | str | None]) -> bytes:
    """(name, data) files, (name, "->target") symlinks, (name, None) folders."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = int(T0)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data[2:]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "reason"),
    [("a/b.txt", None), ("/etc/passwd", "an absolute path"), ("../up", "a path with '..'"),
     ("a/../../b", "a path with '..'"), ("", "an empty or invalid name")],
)  # fmt: skip
def test_unsafe_names(name: str, reason: str | None) -> None:
    assert unsafe_reason(name) == reason


async def test_a_tar_stream_is_unpacked_piece_by_piece_and_unsafe_entries_refused(
    tmp_path: Path,
) -> None:
    archive = _tar(
        ("data", None), ("data/a.bin", os.urandom(700_000)), ("data/ok", "->a.bin"),
        ("data/out", "->/etc/passwd"), ("data/up", "->../../x"), ("../evil", b"x"),
        ("/abs", b"y"),
    )  # fmt: skip
    sink = TarSink(tmp_path / "dest", depth=2)
    for start in range(0, len(archive), 4096):
        await sink.feed(archive[start : start + 4096])
    await sink.close()
    assert sink.files == ["data/a.bin"]
    assert sink.written == 700_000
    assert [s.split(":")[0] for s in sink.skipped] == ["data/out", "data/up", "../evil", "/abs"]
    assert sorted(p.name for p in (tmp_path / "dest" / "data").iterdir()) == ["a.bin", "ok"]
    assert os.readlink(tmp_path / "dest" / "data" / "ok") == "a.bin"
    assert (tmp_path / "dest" / "data" / "a.bin").stat().st_mtime == T0
    assert not (tmp_path / "evil").exists() and not Path("/abs").exists()


async def test_an_aborted_or_damaged_archive_leaves_no_partial_file(tmp_path: Path) -> None:
    archive = _tar(("big.bin", os.urandom(1_000_000)))
    sink = TarSink(tmp_path, depth=2)
    await sink.feed(archive[:300_000])
    await asyncio.sleep(0.05)
    await sink.abort()
    assert list(tmp_path.iterdir()) == []
    sink = TarSink(tmp_path / "x")
    with pytest.raises(tarfile.ReadError):
        await sink.feed(b"not a tar archive" * 100)
        await sink.close()


# -- what an upload sends ----------------------------------------------------------------------
def test_upload_plan(tmp_path: Path) -> None:
    for rel in ["a.csv", "d/b.txt", "d/e/c.txt", "d/.ipynb_checkpoints/x", "d/.env"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("12345")
    plan = upload_plan(tmp_path, ["a.csv", "d"], "out")
    assert [(i.remote, i.size) for i in plan] == [
        ("out/a.csv", 5),
        ("out/d/.env", 5),
        ("out/d/b.txt", 5),
        ("out/d/e/c.txt", 5),
    ]
    assert [i.remote for i in upload_plan(tmp_path, ["d/"], "")] == [".env", "b.txt", "e/c.txt"]
    assert [i.remote for i in upload_plan(tmp_path / "d", ["."], "x")][:1] == ["x/.env"]
    with pytest.raises(MagicError) as info:
        upload_plan(tmp_path, ["a.csv", "missing.csv"], "")
    assert (info.value.ename, str(info.value)) == (
        "FileNotFoundError",
        f"No such file or folder: 'missing.csv' (in {tmp_path}).",
    )


# -- the kernelspec option ---------------------------------------------------------------------
def test_sync_on_start_in_the_kernelspec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = kernelspec.get_kernel_dict(endpoint="http://h:1", sync_on_start=True)
    assert spec["argv"][-1] == "--RemoteKernel.sync_on_start=True"
    assert spec["metadata"]["remote_kernel"]["sync_on_start"] is True
    plain = kernelspec.get_kernel_dict(endpoint="http://h:1")
    assert not any("sync_on_start" in arg for arg in plain["argv"])
    assert "sync_on_start" not in plain["metadata"]["remote_kernel"]

    assert main(["install", "--name=remote-synced", "--sync-on-start",
                 f"--prefix={tmp_path}"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "sync on start: the notebook's folder goes to each new session" in out
    installed = json.loads(
        (tmp_path / "share/jupyter/kernels/remote-synced/kernel.json").read_text()
    )
    assert "--RemoteKernel.sync_on_start=True" in installed["argv"]


# -- transfer's error mapping, with a fake client ----------------------------------------------
class FakeFileClient:
    """The file calls of a RunLoopClient, scripted."""

    def __init__(self, *, session_alive: bool = True, archive: bytes = b"") -> None:
        self.session_alive = session_alive
        self.archive = archive

    async def session_info(self, sid: str, *, timeout: float | None = None) -> dict:
        if not self.session_alive:
            raise SessionNotFoundError("No such session.")
        return {}

    async def list_files(self, sid: str, path: str = ".", **_: object) -> list:
        # what error_from_problem makes of our server's 404 for a missing file
        raise SessionNotFoundError(f"No such file or directory in the session: {path!r}.")

    async def download_files(self, sid: str, names: list[str], **_: object):
        for start in range(0, len(self.archive), 1000):
            yield 0, self.archive[start : start + 1000]


async def test_a_404_is_a_missing_file_unless_the_session_is_gone() -> None:
    with pytest.raises(MagicError) as info:
        await transfer.list_folder(FakeFileClient(), "sid", "nope")  # type: ignore[arg-type]
    assert (info.value.ename, str(info.value)) == (
        "FileNotFoundError",
        "No such file or directory in the session: 'nope'.",
    )
    with pytest.raises(SessionNotFoundError, match="No such session"):
        gone = FakeFileClient(session_alive=False)
        await transfer.list_folder(gone, "sid", "nope")  # type: ignore[arg-type]


async def test_a_damaged_archive_is_a_protocol_error(tmp_path: Path) -> None:
    client = FakeFileClient(archive=b"this is not a tar archive" * 100)
    with pytest.raises(ProtocolError, match=r"damaged archive of 'x\.bin'"):
        progress = Progress(None, "", None)
        await transfer.download(client, "sid", [("x.bin", tmp_path)], progress)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "module",
    ["remote_kernel.proxy.magics", "remote_kernel.proxy.sync", "remote_kernel.proxy.progress"],
)
def test_the_pure_parts_import_no_io_library(module: str) -> None:
    heavy = ("aiohttp", "zmq", "ipykernel", "jupyter_client", "tornado")
    code = (
        f"import sys, {module}\n"
        f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
