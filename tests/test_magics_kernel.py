"""``%remote`` through jupyter_client: the real proxy kernel against real servers.

Two kernels, each in its own notebook folder (its cwd):

* ``base``: against a server without extensions (it behaves like a Backend.AI manager, so only
  Backend.AI's file API is there): every subcommand, mixed cells, errors, completion;
* ``synced``: against a server with extensions, installed with ``sync_on_start`` and a progress
  display at once (``transfer_progress_after=0``): the sync at start, sync counts, ``--down``,
  ``.remoteignore``, the progress display, ``info``, and one execution count per cell where
  the remote kernel counts cells.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from remote_kernel.proxy import magics
from remote_kernel.proxy.progress import format_size

from .conftest import ServerProcess
from .kernel_helpers import execute, install_kernelspec, running_kernel

pytestmark = pytest.mark.timeout(120)

DATA = "a,b\n1,2\n3,4\n"  # 12 B
PNG = os.urandom(2000)  # 2.0 KiB
HELLO = "hello\n"  # 6 B


def kernel_in(name: str, cwd: Path) -> Any:
    """Start the kernel ``name`` with ``cwd`` as its notebook folder; always shut it down."""
    return running_kernel(name, cwd)


def is_progress(msg: dict[str, Any]) -> bool:
    return msg["msg_type"] in ("display_data", "update_display_data") and str(
        msg["content"].get("transient", {}).get("display_id", "")
    ).startswith("remote-transfer-")


def shown(outputs: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The outputs as (kind, text...) tuples, progress displays left out."""
    out: list[tuple[str, ...]] = []
    for msg in outputs:
        kind, content = msg["msg_type"], msg["content"]
        if is_progress(msg):
            continue
        if kind == "stream":
            out.append((content["name"], content["text"]))
        elif kind == "error":
            out.append(("error", content["ename"], content["evalue"]))
        elif kind == "execute_result":
            out.append(("result", content["data"]["text/plain"], str(content["execution_count"])))
        else:
            out.append((kind, str(content.get("data", content))))
    return out


def run(kc: BlockingKernelClient, code: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return execute(kc, code, timeout=60)


def ok(kc: BlockingKernelClient, code: str) -> list[tuple[str, ...]]:
    reply, outputs = run(kc, code)
    assert reply["status"] == "ok", (reply, shown(outputs))
    return shown(outputs)


def complete(kc: BlockingKernelClient, code: str) -> list[str]:
    msg_id = kc.complete(code, len(code))
    while True:
        msg = kc.get_shell_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id:
            return list(msg["content"]["matches"])


# -- a kernel against a base-layer server ------------------------------------------------------
@pytest.fixture(scope="module")
def base_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("notebook-base")
    (folder / "data.csv").write_text(DATA)
    (folder / "pics" / "sub").mkdir(parents=True)
    (folder / "pics" / "a.png").write_bytes(PNG)
    (folder / "pics" / "sub" / "b.txt").write_text(HELLO)
    return folder


@pytest.fixture(scope="module")
def base_kc(
    base_server: ServerProcess, base_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BlockingKernelClient]:
    install_kernelspec("remote-magics-base", base_server.env,
                       prefix=tmp_path_factory.mktemp("spec-base"))  # fmt: skip
    with kernel_in("remote-magics-base", base_folder) as (_km, kc):
        yield kc


def test_help(base_kc: BlockingKernelClient) -> None:
    assert ok(base_kc, "%remote") == [("stdout", magics.USAGE)]
    assert ok(base_kc, "%remote help") == [("stdout", magics.USAGE)]
    assert ok(base_kc, "%remote help sync") == [("stdout", magics.usage("sync"))]
    assert ok(base_kc, "%remote download -h") == [("stdout", magics.usage("download"))]


def test_upload_files_and_folders_then_use_them_remotely(base_kc: BlockingKernelClient) -> None:
    assert ok(base_kc, "%remote upload data.csv pics --to inbox") == [
        ("stdout", "Uploaded 3 files (2.0 KiB) to inbox/ in the work directory.\n")
    ]
    assert ok(base_kc, "%remote ls inbox") == [
        ("stdout", "      12 B  data.csv\n         -  pics/\n")
    ]
    assert ok(base_kc, "%remote ls /home/work/inbox/pics") == [
        ("stdout", "   2.0 KiB  a.png\n         -  sub/\n")
    ]
    code = "print(open('inbox/data.csv').read() + open('inbox/pics/sub/b.txt').read(), end='')"
    assert ok(base_kc, code) == [("stdout", DATA + HELLO)]
    assert ok(base_kc, "print(len(open('inbox/pics/a.png', 'rb').read()))") == [
        ("stdout", "2000\n")
    ]
    assert ok(base_kc, "%remote upload pics/sub/") == [
        ("stdout", "Uploaded 1 file (6 B) to the work directory.\n")
    ]
    assert ok(base_kc, "print(open('b.txt').read(), end='')") == [("stdout", HELLO)]


def test_download_files_and_folders(base_kc: BlockingKernelClient, base_folder: Path) -> None:
    ok(base_kc, "import os\nos.makedirs('results/deep', exist_ok=True)\n"
                "open('results/r.txt', 'w').write('r' * 10)\n"
                "open('results/deep/s.txt', 'w').write('s' * 2000)")  # fmt: skip
    assert ok(base_kc, "%remote download results/r.txt") == [
        ("stdout", "Downloaded 1 file (10 B) into the notebook's folder.\n")
    ]
    assert (base_folder / "r.txt").read_text() == "r" * 10
    assert ok(base_kc, "%remote download results --to back") == [
        ("stdout", "Downloaded 2 files (2.0 KiB) into back/.\n")
    ]
    assert (base_folder / "back" / "results" / "r.txt").read_text() == "r" * 10
    assert (base_folder / "back" / "results" / "deep" / "s.txt").read_text() == "s" * 2000


def test_a_mixed_cell_runs_in_order_with_one_execution_count(
    base_kc: BlockingKernelClient,
) -> None:
    first, _ = run(base_kc, "1")
    cell = (
        "print('before')\n"
        "%remote upload data.csv --to mixed\n"
        "print(open('mixed/data.csv').read(), end='')\n"
        "%remote ls mixed\n"
        "print('after')"
    )
    reply, outputs = run(base_kc, cell)
    assert reply["status"] == "ok"
    assert shown(outputs) == [
        ("stdout", "before\n"),
        ("stdout", "Uploaded 1 file (12 B) to mixed/ in the work directory.\n"),
        ("stdout", DATA),
        ("stdout", "      12 B  data.csv\n"),
        ("stdout", "after\n"),
    ]
    count = first["execution_count"]
    assert reply["execution_count"] == count + 1
    assert run(base_kc, "%remote ls mixed")[0]["execution_count"] == count + 2
    assert run(base_kc, "2")[0]["execution_count"] == count + 3


def test_errors_end_the_cell_with_status_error(
    base_kc: BlockingKernelClient, base_folder: Path
) -> None:
    reply, outputs = run(base_kc, "%remote uplod data.csv")
    evalue = ("line 1: %remote: unknown subcommand 'uplod'; use one of upload, download, ls, "
              "sync, info, help.")  # fmt: skip
    assert (reply["status"], reply["ename"], reply["evalue"]) == ("error", "UsageError", evalue)
    assert [m["msg_type"] for m in outputs] == ["error"]  # one red line, no traceback of ours
    assert outputs[0]["content"]["traceback"] == [f"\x1b[0;31mUsageError\x1b[0m: {evalue}"]

    # a bad line anywhere stops the cell before its first line runs
    reply, outputs = run(base_kc, "print('one')\n%remote ls\n%remote ls ../x")
    assert reply["status"] == "error"
    assert shown(outputs) == [
        ("error", "UsageError", "line 3: %remote: '../x' leaves the work directory.")
    ]

    # a failing step stops the rest
    reply, outputs = run(base_kc, "print('one')\n%remote upload missing.csv\nprint('two')")
    assert reply["status"] == "error"
    assert shown(outputs) == [
        ("stdout", "one\n"),
        ("error", "FileNotFoundError",
         f"No such file or folder: 'missing.csv' (in {base_folder})."),
    ]  # fmt: skip
    reply, outputs = run(base_kc, "%remote download nope.txt")
    assert shown(outputs) == [
        ("error", "FileNotFoundError", "No such file or folder in the work directory: 'nope.txt'.")
    ]
    reply, outputs = run(base_kc, "%remote ls nope")
    assert reply["ename"] == "FileNotFoundError" and reply["evalue"].startswith("No such file")
    assert run(base_kc, "print('still fine')")[0]["status"] == "ok"


def test_a_failing_magic_stops_a_notebook_run(
    base_kc: BlockingKernelClient, tmp_path: Path
) -> None:
    """nbclient (and papermill, on top of it) stop at the cell whose reply is an error."""
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(source)
            for source in ("x = 1", "%remote upload nothing.csv", "print(x)")
        ]
    )
    client = NotebookClient(nb, kernel_name="remote-magics-base", timeout=60,
                            resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    with pytest.raises(CellExecutionError) as info:
        client.execute()
    assert info.value.ename == "FileNotFoundError"
    assert nb.cells[1].outputs[0]["evalue"] == (
        f"No such file or folder: 'nothing.csv' (in {tmp_path})."
    )
    assert nb.cells[2].outputs == [] and nb.cells[2].execution_count is None


def test_the_example_notebook_runs(base_kc: BlockingKernelClient, tmp_path: Path) -> None:
    source = files("remote_kernel").joinpath("examples/files.ipynb").read_text()
    (tmp_path / "files.ipynb").write_text(source)
    nb = nbformat.reads(source, as_version=4)
    client = NotebookClient(nb, kernel_name="remote-magics-base", timeout=60,
                            resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute()
    texts = ["".join(o.get("text", "") for o in c.get("outputs", [])) for c in nb.cells]
    assert "Downloaded 1 file (56 B) into the notebook's folder.\n" in texts
    sent = format_size((tmp_path / "files.ipynb").stat().st_size + 56)  # it and squares.csv
    assert f"Sync to the work directory: 2 sent ({sent}), 0 unchanged.\n" in texts
    assert "Sync to the work directory: 0 sent (0 B), 2 unchanged.\n" in texts
    assert "Sync from the work directory: 2 received (112 B), 2 unchanged.\n" in texts
    assert (tmp_path / "squares.csv").read_text().splitlines()[-1] == "9,81"
    assert (tmp_path / "inputs" / "squares.csv").is_file()  # brought back by sync --down


def test_a_file_over_the_server_limit_gets_its_413_message(
    base_kc: BlockingKernelClient, base_folder: Path
) -> None:
    with open(base_folder / "huge.bin", "wb") as fh:  # sparse: quick to make, 65 MiB to send
        fh.truncate(65 * 1024 * 1024)
    try:
        reply, outputs = run(base_kc, "%remote upload huge.bin")
    finally:
        (base_folder / "huge.bin").unlink()
    assert reply["status"] == "error" and reply["ename"] == "RequestTooLargeError"
    assert reply["evalue"].startswith("'huge.bin' is larger than the server's limit")
    assert [m["msg_type"] for m in outputs if not is_progress(m)] == ["error"]


def test_completion(base_kc: BlockingKernelClient) -> None:
    assert complete(base_kc, "%remote ") == list(magics.SUBCOMMANDS)
    assert complete(base_kc, "x = 1\n%remote do") == ["download"]
    assert complete(base_kc, "%remote sync --d") == ["--down"]
    assert complete(base_kc, "%remote upload da") == ["data.csv"]
    assert complete(base_kc, "%remote upload pics/") == ["pics/a.png", "pics/sub/"]
    ok(base_kc, "import os; os.makedirs('compl/zeta', exist_ok=True)")
    assert complete(base_kc, "%remote ls compl/z") == ["compl/zeta/"]


# -- a kernel with sync_on_start, against a server with extensions -----------------------------
@pytest.fixture(scope="module")
def synced_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("notebook-synced")
    (folder / "notes.txt").write_text("notes\n")  # 6 B
    (folder / "data").mkdir()
    (folder / "data" / "values.csv").write_text(DATA)  # 12 B
    (folder / "data" / "skip.log").write_text("ignored\n")
    (folder / ".secret").write_text("hidden\n")
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "x.ipynb").write_text("{}")
    (folder / ".remoteignore").write_text("# not synced\n*.log\nscratch/\n")
    return folder


@pytest.fixture(scope="module")
def session_name() -> str:
    return f"magics-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def synced_kc(
    server: ServerProcess,
    synced_folder: Path,
    session_name: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BlockingKernelClient]:
    install_kernelspec(
        "remote-magics-synced", server.env, prefix=tmp_path_factory.mktemp("spec-synced"),
        extra_argv=["--RemoteKernel.sync_on_start=True",
                    "--RemoteKernel.transfer_progress_after=0",
                    f"--RemoteKernel.session_name={session_name}"],
    )  # fmt: skip
    with kernel_in("remote-magics-synced", synced_folder) as (_km, kc):
        yield kc


def test_sync_on_start_then_sync_counts_and_down(
    synced_kc: BlockingKernelClient, synced_folder: Path
) -> None:
    kc, folder = synced_kc, synced_folder
    assert ok(kc, "%remote ls") == [("stdout", "         -  data/\n       6 B  notes.txt\n")]
    assert ok(kc, "%remote ls data") == [("stdout", "      12 B  values.csv\n")]
    assert ok(kc, "%remote sync") == [
        ("stdout", "Sync to the work directory: 0 sent (0 B), 2 unchanged.\n")
    ]

    (folder / "notes.txt").write_text("notes, edited\n")  # 14 B
    (folder / "new.txt").write_text("new\n")  # 4 B
    assert ok(kc, "%remote sync") == [
        ("stdout", "Sync to the work directory: 2 sent (18 B), 1 unchanged.\n")
    ]
    assert ok(kc, "%remote sync") == [
        ("stdout", "Sync to the work directory: 0 sent (0 B), 3 unchanged.\n")
    ]
    assert ok(kc, "print(open('notes.txt').read(), end='')") == [("stdout", "notes, edited\n")]

    ok(kc, "import os\nos.makedirs('made', exist_ok=True)\nos.makedirs('scratch', exist_ok=True)\n"
           "open('made/out.txt', 'w').write('made remotely\\n')\n"  # 14 B
           "open('notes.txt', 'w').write('notes, rewritten remotely\\n')\n"  # 26 B
           "open('scratch/tmp.bin', 'w').write('x')\nopen('run.log', 'w').write('x')")  # fmt: skip
    assert ok(kc, "%remote sync --down") == [
        ("stdout", "Sync from the work directory: 2 received (40 B), 2 unchanged.\n")
    ]
    assert (folder / "notes.txt").read_text() == "notes, rewritten remotely\n"
    assert (folder / "made" / "out.txt").read_text() == "made remotely\n"
    assert not (folder / "scratch").exists() and not (folder / "run.log").exists()
    assert ok(kc, "%remote sync --down") == [
        ("stdout", "Sync from the work directory: 0 received (0 B), 4 unchanged.\n")
    ]
    assert ok(kc, "%remote sync") == [
        ("stdout", "Sync to the work directory: 0 sent (0 B), 4 unchanged.\n")
    ]


def _progress_of(outputs: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return [(m["msg_type"], m["content"]["transient"]["display_id"],
             m["content"]["data"]["text/plain"], m["content"]["data"]["text/html"])
            for m in outputs if is_progress(m)]  # fmt: skip


def test_the_progress_display_ends_at_100_percent(
    synced_kc: BlockingKernelClient, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    reply, outputs = run(synced_kc, f"%remote upload {big} --to scratch")
    assert reply["status"] == "ok"
    progress = _progress_of(outputs)
    assert progress[0][0] == "display_data"
    assert {p[0] for p in progress[1:]} == {"update_display_data"} and len(progress) >= 2
    assert len({p[1] for p in progress}) == 1  # one display, updated in place
    assert re.fullmatch(r"Uploading 1 file: 100% \(3\.0 MiB of 3\.0 MiB(, [\d.]+ \w+/s)?\)",
                        progress[-1][2])  # fmt: skip
    assert progress[-1][3].startswith('<div><progress value="100" max="100"')
    assert shown(outputs) == [
        ("stdout", "Uploaded 1 file (3.0 MiB) to scratch/ in the work directory.\n")
    ]
    # and the last progress message comes before the report
    assert is_progress(outputs[-2]) and outputs[-1]["msg_type"] == "stream"

    reply, outputs = run(synced_kc, f"%remote download scratch/big.bin --to {tmp_path}/back")
    assert reply["status"] == "ok"
    progress = _progress_of(outputs)
    assert progress[0][0] == "display_data" and progress[-1][0] == "update_display_data"
    assert progress[-1][2].startswith("Downloading scratch/big.bin: 100% (3.0 MiB of 3.0 MiB")
    assert (tmp_path / "back" / "big.bin").read_bytes() == big.read_bytes()


def test_one_execution_count_per_cell_where_the_remote_counts(
    synced_kc: BlockingKernelClient,
) -> None:
    reply, outputs = run(synced_kc, "10")
    count = reply["execution_count"]
    assert shown(outputs) == [("result", "10", str(count))]
    reply, outputs = run(synced_kc, "x = 6\n%remote ls data\nx * 7")
    assert reply["execution_count"] == count + 1
    assert shown(outputs) == [
        ("stdout", "      12 B  values.csv\n"),
        ("result", "42", str(count + 1)),
    ]
    reply, outputs = run(synced_kc, "%remote ls data\nx\n%remote ls data\nx + 1")
    assert reply["execution_count"] == count + 2
    assert [o for o in shown(outputs) if o[0] == "result"] == [
        ("result", "6", str(count + 2)),
        ("result", "7", str(count + 2)),
    ]
    assert run(synced_kc, "%remote ls data")[0]["execution_count"] == count + 3
    reply, outputs = run(synced_kc, "'next'")
    assert shown(outputs) == [("result", "'next'", str(count + 4))]
    # the proxy's history has whole cells, magic lines included
    msg_id = synced_kc.history(hist_access_type="tail", n=3, output=False, raw=True)
    while (msg := synced_kc.get_shell_msg(timeout=30))["parent_header"]["msg_id"] != msg_id:
        pass
    assert [entry[2] for entry in msg["content"]["history"]] == [
        "%remote ls data\nx\n%remote ls data\nx + 1",
        "%remote ls data",
        "'next'",
    ]


def test_info(synced_kc: BlockingKernelClient, server: ServerProcess, session_name: str) -> None:
    (text,) = [o[1] for o in ok(synced_kc, "%remote info")]
    lines = text.splitlines()
    assert [line[:11] for line in lines] == [
        "session    ", "image      ", "endpoint   ", "resources  ", "work dir   ", "uptime     ",
        "start sync "]  # fmt: skip
    assert re.fullmatch(rf"session    {session_name} \([0-9a-f-]{{36}}\)", lines[0])
    assert lines[1] == "image      python:3"
    assert lines[2] == f"endpoint   {server.endpoint}"
    work_dir = "/home/work" if server.sandbox == "bubblewrap" else r"/\S+"
    assert re.fullmatch(f"work dir   {work_dir}", lines[4])
    assert re.fullmatch(r"uptime     \d+:\d\d:\d\d", lines[5])
    assert lines[6] == "start sync 2 sent (18 B), 0 unchanged"
