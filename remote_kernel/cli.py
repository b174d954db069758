"""``remote-kernel``: one traitlets application per subcommand.

``remote-kernel serve | keys create | install | list | remove | demo``; ``--help`` on any of
them lists its options (each a ``--Class.trait`` flag with its environment-variable twin).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

from traitlets.config import Application

from ._version import __version__

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": (
        "remote_kernel.server.app.ServerApp",
        "Run the compute-session server (Backend.AI run-loop API over local Jupyter kernels).",
    ),
    "keys": ("remote_kernel.server.keystore.KeysApp", "Manage the server's keypairs."),
    "install": (
        "remote_kernel.kernelspec_apps.InstallKernelSpecApp",
        "Install a kernelspec that runs cells on a remote compute session.",
    ),
    "list": (
        "remote_kernel.kernelspec_apps.ListKernelSpecsApp",
        "List installed remote kernelspecs.",
    ),
    "remove": (
        "remote_kernel.kernelspec_apps.RemoveKernelSpecApp",
        "Remove a remote kernelspec.",
    ),
    "demo": (
        "remote_kernel.demo.DemoApp",
        "Start a throwaway server and run the tour notebook through the remote kernel.",
    ),
}


class RemoteKernelCLI(Application):
    """The ``remote-kernel`` command: dispatches to a subcommand."""

    name = "remote-kernel"
    version = __version__
    description = "Run Jupyter cells on remote compute sessions."
    subcommands = dict(SUBCOMMANDS)  # type: ignore[assignment]

    def start(self) -> None:
        if self.subapp is None:
            self.print_help()
            self.exit(2)
        else:
            self.subapp.start()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``remote-kernel`` console script; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    app = RemoteKernelCLI.instance()
    try:
        app.initialize(args)
        app.start()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        _clear_singletons(app)
    return 0


def _clear_singletons(app: Application) -> None:
    """Forget the app and its subcommand apps, so a second ``main()`` starts afresh."""
    chain: list[Application] = []
    current: Application | None = app
    while current is not None:
        chain.append(current)
        current = current.subapp
    for each in reversed(chain):
        type(each).clear_instance()


def command_name() -> str:
    """How to type ``remote-kernel`` here: the bare name when it is on PATH, else the path of
    this environment's script (``.venv/bin/remote-kernel`` after the README's set-up)."""
    script = Path(sys.executable).parent / "remote-kernel"
    found = shutil.which("remote-kernel")
    if found and (not script.exists() or Path(found).resolve() == script.resolve()):
        return "remote-kernel"
    if not script.exists():
        return f"{sys.executable} -m remote_kernel"
    with contextlib.suppress(ValueError):
        relative = os.path.relpath(script)
        if not relative.startswith(".."):
            return relative
    return str(script)
