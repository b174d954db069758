"""``remote-kernel demo``: the whole product in one command, with nothing to set up.

1. create a throwaway keypair and start ``remote-kernel serve`` on a free loopback port,
2. install a temporary kernelspec for it (in a temp prefix put on ``JUPYTER_PATH``),
3. run the tour notebook (``remote_kernel/examples/tour.ipynb``) through the remote kernel with
   nbclient, write ``tour.executed.ipynb`` into the current directory and print a summary,
4. stop everything it started (kernel, server, temp dirs), also on Ctrl-C and on errors.

The keypair reaches the kernel through the process environment (``BACKEND_*``), never a file
outside the temp dir.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.resources
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from traitlets import Float, Unicode

from .cli import command_name
from .kernelspec import install
from .kernelspec_apps import SubcommandApp

DEMO_KERNEL_NAME = "remote-python-demo"
_ENDPOINT_RE = re.compile(r"(http://127\.0\.0\.1:\d+)")


class DemoError(Exception):
    """A step of the demo failed; the message says which and what to look at."""


def tour_notebook() -> Path:
    """The tour notebook shipped inside the package."""
    return Path(str(importlib.resources.files("remote_kernel") / "examples" / "tour.ipynb"))


def _drain(stream: IO[str], sink: IO[str]) -> None:
    """Copy a child's stdout into its log so that a full pipe never blocks it."""
    with contextlib.suppress(ValueError, OSError):
        for line in stream:
            sink.write(line)
            sink.flush()


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, indented (empty if it cannot be read)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


class DemoServer:
    """A ``remote-kernel serve`` subprocess in its own temp state dir, with a fresh keypair."""

    def __init__(self, workdir: Path, extra_args: list[str] | None = None) -> None:
        self.workdir = workdir
        self.extra_args = list(extra_args or [])
        self.state_dir = workdir / "state"
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[str] | None = None
        self.endpoint = ""
        self.access_key = ""
        self.secret_key = ""

    def _create_keypair(self) -> None:
        cmd = [sys.executable, "-m", "remote_kernel", "keys", "create"]
        done = subprocess.run(
            [*cmd, "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        values = dict(
            line.split("=", 1) for line in done.stdout.splitlines() if line.startswith("BACKEND_")
        )
        if done.returncode != 0 or not {"BACKEND_ACCESS_KEY", "BACKEND_SECRET_KEY"} <= set(values):
            raise DemoError(
                f"`remote-kernel keys create` failed (exit {done.returncode}):\n"
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        self.access_key = values["BACKEND_ACCESS_KEY"].strip()
        self.secret_key = values["BACKEND_SECRET_KEY"].strip()

    def start(self, timeout: float) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._create_keypair()
        log = open(self.log_path, "w")  # noqa: SIM115 - closed when the process ends
        cmd = [sys.executable, "-m", "remote_kernel", "serve", "--ip", "127.0.0.1", "--port", "0"]
        # a throwaway state dir: nothing to recover, so its kernels die with a killed server
        cmd.append("--ServerApp.recover_sessions=False")
        self.proc = subprocess.Popen(
            [*cmd, "--state-dir", str(self.state_dir), *self.extra_args],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the server in order
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        found: list[str] = []

        def watch() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                match = _ENDPOINT_RE.search(line)
                if match:
                    found.append(match.group(1))
                    break
            _drain(self.proc.stdout, log)

        threading.Thread(target=watch, name="demo-server-stdout", daemon=True).start()
        while not found and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.05)
        if not found:
            code = self.proc.poll()
            state = f"exited with {code}" if code is not None else f"gave no address in {timeout}s"
            self.stop()
            raise DemoError(f"The server {state}. Its log:\n{log_tail(self.log_path)}")
        self.endpoint = found[0]

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextlib.contextmanager
def _patched_environ(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def summarize(nb: Any, timings: dict[int, float], startup: float) -> str:
    """The demo's report: cells, outputs by type, time per cell."""
    code_cells = []
    heading = ""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            titles = [
                ln.lstrip("#").strip() for ln in cell.source.splitlines() if ln.startswith("#")
            ]
            heading = titles[-1] if titles else heading
        elif cell.cell_type == "code":
            first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
            code_cells.append((index, cell, heading or first))
            heading = ""
    counts: collections.Counter[str] = collections.Counter()
    lines = []
    for number, (index, cell, first) in enumerate(code_cells, 1):
        kinds = [out.output_type for out in cell.outputs]
        counts.update(kinds)
        took = timings.get(index)
        took_text = f"{took * 1000:7.0f} ms" if took is not None else "      - ms"
        shown = ", ".join(f"{n} {k}" for k, n in collections.Counter(kinds).items()) or "-"
        lines.append(f"  [{number}] {took_text}  {first[:40]:<40}  {shown}")
    by_type = ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items()))
    total = sum(timings.values())
    return "\n".join(
        [
            f"{len(code_cells)} code cells ({len(nb.cells)} cells), "
            f"{sum(counts.values())} outputs ({by_type})",
            f"kernel start {startup:.2f} s; cells {total:.2f} s",
            *lines,
        ]
    )


def next_steps(command: str | None = None, port: int = 8090) -> str:
    """What to run after the demo: a server of one's own, a kernelspec for it, a frontend."""
    rk = command or command_name()
    jupyter = rk[: -len("remote-kernel")] + "jupyter" if rk.endswith("remote-kernel") else "jupyter"
    return "\n".join(
        [
            "",
            "Next steps (the demo's server and kernelspec are gone now):",
            "  1. In a second terminal, create a keypair and run a server of your own; it stays in",
            "     the foreground and prints how to connect to it:",
            f"       {rk} keys create      # prints BACKEND_ACCESS_KEY=... BACKEND_SECRET_KEY=...",
            f"       {rk} serve --port {port}",
            "  2. Here, install a kernelspec for it (the keypair goes to your private credentials",
            "     file, never into kernel.json):",
            f"       export BACKEND_ENDPOINT=http://127.0.0.1:{port} BACKEND_ACCESS_KEY=... "
            "BACKEND_SECRET_KEY=...",
            f'       {rk} install --display-name "Python (remote)"',
            '  3. Pick "Python (remote)" in JupyterLab, Notebook or VS Code, or run a notebook:',
            f"       {jupyter} execute --kernel_name=remote-python NOTEBOOK.ipynb",
            "  More: docs/quickstart.md (a Backend.AI cluster: docs/backendai.md; trouble: "
            "docs/troubleshooting.md).",
        ]
    )


class DemoApp(SubcommandApp):
    """``remote-kernel demo``."""

    name = "remote-kernel demo"
    description = """Start a throwaway server and run the tour notebook through the remote kernel.

    Writes the executed notebook (tour.executed.ipynb) into the current directory, prints a
    summary, and stops everything it started.
    """

    output = Unicode(
        "", help="Where to write the executed notebook (default: NAME.executed.ipynb here)."
    ).tag(config=True)
    notebook = Unicode("", help="Run this notebook instead of the packaged tour.").tag(config=True)
    cell_timeout = Float(120.0, help="Seconds each cell may take.").tag(config=True)
    startup_timeout = Float(60.0, help="Seconds the server and the kernel may take to start.").tag(
        config=True
    )

    aliases = {
        "output": "DemoApp.output",
        "notebook": "DemoApp.notebook",
        "timeout": "DemoApp.cell_timeout",
    }

    def start(self) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="remote-kernel-demo-"))
        server = DemoServer(workdir)
        try:
            self._run(workdir, server)
        except KeyboardInterrupt:
            print("\nInterrupted; stopping the demo's kernel and server.", file=sys.stderr)
            self._cleanup(server, workdir)
            self.exit(130)
        except DemoError as exc:
            self._cleanup(server, workdir)
            self.fail(str(exc))
        except Exception as exc:
            self._cleanup(server, workdir)
            self.fail(f"{type(exc).__name__}: {exc}")
        self._cleanup(server, workdir)

    def _cleanup(self, server: DemoServer, workdir: Path) -> None:
        # a second Ctrl-C while stopping must not leave the server behind
        with contextlib.suppress(KeyboardInterrupt):
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def _run(self, workdir: Path, server: DemoServer) -> None:
        import nbformat

        source = Path(self.notebook) if self.notebook else tour_notebook()
        output = Path(self.output or f"{source.stem}.executed.ipynb").resolve()
        print(f"Starting a throwaway server (state in {workdir}) ...", flush=True)
        server.start(self.startup_timeout)
        print(f"Server at {server.endpoint}", flush=True)

        prefix = workdir / "prefix"
        jupyter_path = os.pathsep.join(
            p for p in (str(prefix / "share" / "jupyter"), os.environ.get("JUPYTER_PATH")) if p
        )
        runtime = workdir / "runtime"
        runtime.mkdir()
        env = {
            "JUPYTER_PATH": jupyter_path,
            "JUPYTER_RUNTIME_DIR": str(runtime),
            "BACKEND_ENDPOINT": server.endpoint,
            "BACKEND_ACCESS_KEY": server.access_key,
            "BACKEND_SECRET_KEY": server.secret_key,
        }
        nb = nbformat.read(source, as_version=4)  # type: ignore[no-untyped-call]
        original_spec = dict(nb.metadata.get("kernelspec", {}))
        with _patched_environ(env):
            install(
                kernel_name=DEMO_KERNEL_NAME,
                prefix=str(prefix),
                endpoint=server.endpoint,
                display_name="Python (remote demo)",
            )
            timings, startup, failure = self._execute(nb, source.parent, workdir / "kernel.log")
        if original_spec:
            nb.metadata["kernelspec"] = original_spec
        nbformat.write(nb, output)  # type: ignore[no-untyped-call]
        if failure is not None:
            raise DemoError(f"{failure}\nThe partly executed notebook is in {output}")
        print(f"\nWrote {output}")
        print(summarize(nb, timings, startup))
        print(next_steps(), flush=True)

    def _execute(
        self, nb: Any, cwd: Path, log_path: Path
    ) -> tuple[dict[int, float], float, str | None]:
        """Run every cell of ``nb`` in the demo kernel; return (timings, startup s, failure)."""
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError

        started: dict[int, float] = {}
        timings: dict[int, float] = {}

        def on_execute(cell: Any, cell_index: int, **_: Any) -> None:
            started[cell_index] = time.perf_counter()

        def on_executed(cell: Any, cell_index: int, **_: Any) -> None:
            timings[cell_index] = time.perf_counter() - started.get(cell_index, time.perf_counter())

        client = NotebookClient(
            nb,
            timeout=self.cell_timeout,
            startup_timeout=int(self.startup_timeout),
            kernel_name=DEMO_KERNEL_NAME,
            resources={"metadata": {"path": str(cwd)}},
            on_cell_execute=on_execute,
            on_cell_executed=on_executed,
        )
        t0 = time.perf_counter()
        startup = 0.0
        failure: str | None = None
        print("Starting the remote kernel ...", flush=True)
        log = open(log_path, "w")  # noqa: SIM115 - closed below
        try:
            with client.setup_kernel(stdout=log, stderr=log):
                startup = time.perf_counter() - t0
                print(f"Remote kernel ready in {startup:.2f} s; running the notebook", flush=True)
                assert client.kc is not None
                info = client.wait_for_reply(client.kc.kernel_info())
                if info is not None:
                    nb.metadata["language_info"] = info["content"].get("language_info", {})
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index)
        except CellExecutionError as exc:
            failure = f"A cell failed (tag a cell 'raises-exception' if it is meant to):\n{exc}"
        except Exception as exc:
            raise DemoError(
                f"The remote kernel failed: {type(exc).__name__}: {exc}\n"
                f"Its log:\n{log_tail(log_path)}"
            ) from exc
        finally:
            if client.km is not None:  # startup failed half-way, or an interrupt
                with contextlib.suppress(Exception):
                    client._cleanup_kernel()
            log.close()
        return timings, startup, failure
