"""Large ``%remote`` transfers stream: the proxy kernel's memory stays flat, interrupts stop them.

The proxy kernel process's peak RSS (``VmHWM``, reset through ``/proc/<pid>/clear_refs`` before
each transfer, and sampled as well) may grow by at most :data:`MAX_GROWTH` while 200 MB go up
or down. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from .conftest import ServerProcess, start_server
from .kernel_helpers import execute, install_kernelspec
from .test_magics_kernel import is_progress, kernel_in, shown

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MB = 1000 * 1000
SIZE = 200 * MB
MAX_GROWTH = 60 * 1024 * 1024


@pytest.fixture(scope="module")
def big_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    limit = str(4 * 1000 * MB)
    srv = start_server(tmp_path_factory.mktemp("big-server"),
                       f"--ServerApp.max_upload_bytes={limit}",
                       f"--ServerApp.max_download_bytes={limit}")  # fmt: skip
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("notebook-large")
    with open(path / "big.bin", "wb") as fh:
        for _ in range(SIZE // MB):
            fh.write(os.urandom(MB))
    return path


@pytest.fixture(scope="module")
def kernel(
    big_server: ServerProcess, folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    # the kernel runs in the process jupyter_client started (not forked from the fork server),
    # so that its pid is the one whose memory is measured
    env = {**big_server.env, "REMOTE_KERNEL_FORKSERVER": "0"}
    install_kernelspec("remote-magics-large", env,
                       prefix=tmp_path_factory.mktemp("spec-large"),
                       extra_argv=["--RemoteKernel.transfer_progress_after=0.2"])  # fmt: skip
    with kernel_in("remote-magics-large", folder) as pair:
        yield pair


def _status(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` size in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


@contextmanager
def peak_rss(pid: int) -> Iterator[dict[str, int]]:
    """``{"before", "peak"}``: RSS before, and the highest RSS while the block ran."""
    figures = {"before": _status(pid, "VmRSS"), "peak": 0}
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:  # resets VmHWM to the current RSS
            fh.write("5")
        reset = True
    except OSError:
        reset = False
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            figures["peak"] = max(figures["peak"], _status(pid, "VmRSS"))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield figures
    finally:
        stop.set()
        sampler.join()
        if reset:
            figures["peak"] = max(figures["peak"], _status(pid, "VmHWM"))


def _measured(
    kernel: tuple[KernelManager, BlockingKernelClient], code: str
) -> tuple[dict[str, Any], list[dict[str, Any]], int, float]:
    km, kc = kernel
    pid = km.provisioner.process.pid  # type: ignore[union-attr]
    execute(kc, "1")  # settle
    with peak_rss(pid) as figures:
        started = time.monotonic()
        reply, outputs = execute(kc, code, timeout=240)
        seconds = time.monotonic() - started
    growth = figures["peak"] - figures["before"]
    before = figures["before"] / 2**20
    print(f"\n{code}: {seconds:.2f} s, {SIZE / MB / seconds:.0f} MB/s; proxy RSS "
          f"{before:.0f} MiB before, peak +{growth / 2**20:.1f} MiB")  # fmt: skip
    return reply, outputs, growth, seconds


def test_a_200_mb_upload_keeps_the_proxy_small(
    kernel: tuple[KernelManager, BlockingKernelClient], folder: Path
) -> None:
    reply, outputs, growth, _ = _measured(kernel, "%remote upload big.bin")
    assert reply["status"] == "ok", shown(outputs)
    assert shown(outputs) == [("stdout", "Uploaded 1 file (190.7 MiB) to the work directory.\n")]
    assert growth < MAX_GROWTH
    digest = hashlib.sha256((folder / "big.bin").read_bytes()).hexdigest()
    _, outputs = execute(kernel[1], HASH.format(name="big.bin"))
    assert shown(outputs) == [("stdout", digest + "\n")]


HASH = """\
import hashlib
h = hashlib.sha256()
with open({name!r}, 'rb') as fh:
    for block in iter(lambda: fh.read(1 << 20), b''):
        h.update(block)
print(h.hexdigest())"""


def test_a_200_mb_download_keeps_the_proxy_small(
    kernel: tuple[KernelManager, BlockingKernelClient], folder: Path
) -> None:
    kc = kernel[1]
    _, outputs = execute(kc, f"import os\nwith open('made.bin', 'wb') as fh:\n"
                             f"    for _ in range({SIZE // MB}):\n"
                             f"        fh.write(os.urandom({MB}))\n" + HASH.format(name="made.bin"),
                         timeout=120)  # fmt: skip
    ((_, digest),) = shown(outputs)
    reply, outputs, growth, _ = _measured(kernel, "%remote download made.bin --to back")
    assert reply["status"] == "ok", shown(outputs)
    assert shown(outputs) == [("stdout", "Downloaded 1 file (190.7 MiB) into back/.\n")]
    assert growth < MAX_GROWTH
    assert hashlib.sha256((folder / "back" / "made.bin").read_bytes()).hexdigest() + "\n" == digest


def _interrupt_once_shown(
    kernel: tuple[KernelManager, BlockingKernelClient], code: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ``code``; interrupt it as soon as its progress display appears."""
    km, kc = kernel
    msg_id = kc.execute(code)
    outputs: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    interrupted = False
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        if msg["msg_type"] not in ("status", "execute_input"):
            outputs.append(msg)
        if is_progress(msg) and not interrupted:
            km.interrupt_kernel()
            interrupted = True
    while (reply := kc.get_shell_msg(timeout=30))["parent_header"].get("msg_id") != msg_id:
        pass
    return reply["content"], outputs


def test_an_interrupt_stops_a_transfer_and_leaves_no_partial_file(
    kernel: tuple[KernelManager, BlockingKernelClient], folder: Path
) -> None:
    kc = kernel[1]
    with open(folder / "huge.bin", "wb") as fh:  # sparse: 3 GB to send, none to write here
        fh.truncate(3000 * MB)
    try:
        reply, outputs = _interrupt_once_shown(kernel, "%remote upload huge.bin --to up")
    finally:
        (folder / "huge.bin").unlink()
    assert (reply["status"], reply["ename"]) == ("error", "KeyboardInterrupt")
    assert shown(outputs) == [
        ("error", "KeyboardInterrupt", "interrupted: %remote upload huge.bin --to up")
    ]
    # the server drops its partial file once it sees the connection closed
    check = ("import os, time\nfor _ in range(100):\n"
             "    if not os.path.exists('up') or not os.listdir('up'): break\n"
             "    time.sleep(0.1)\n"
             "print(os.listdir('up') if os.path.exists('up') else [])")  # fmt: skip
    assert shown(execute(kc, check)[1]) == [("stdout", "[]\n")]

    execute(kc, "open('huge.bin', 'wb').truncate(3000 * 1000 * 1000)")
    reply, outputs = _interrupt_once_shown(kernel, "%remote download huge.bin --to dl")
    assert (reply["status"], reply["ename"]) == ("error", "KeyboardInterrupt")
    leftovers = list((folder / "dl").iterdir()) if (folder / "dl").exists() else []
    assert leftovers == []  # no partial file
    reply, outputs = execute(kc, "print('still fine')")
    assert reply["status"] == "ok" and shown(outputs) == [("stdout", "still fine\n")]
