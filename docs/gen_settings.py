"""Write the settings references from the traits (their help text is the documentation).

- ``docs/server-settings.md``: every configurable trait of ``remote-kernel serve``'s ``ServerApp``;
- ``docs/kernel-settings.md``: every configurable trait ``RemoteKernel`` adds to ipykernel's kernel.

Sphinx regenerates both when it builds the site (``docs/conf.py`` calls :func:`write_all`), so the
site always shows the code's settings. ``server-settings.md`` is also kept in the repository, for
readers of the source tree (tests/test_docs.py checks it is current: run
``python docs/gen_settings.py`` after changing a server trait); ``kernel-settings.md`` exists only
in builds (git-ignored: ``remote-kernel``'s kernel settings are also listed by
``python -m remote_kernel --help-all``). tests/test_docs_site.py checks that no setting is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TARGET = HERE / "server-settings.md"
KERNEL_TARGET = HERE / "kernel-settings.md"

#: Defaults computed at run time, shown as what they mean rather than this machine's value.
SERVER_DEFAULTS = {
    "state_dir": "`$XDG_STATE_HOME/remote-kernel`",
    "vfolder_root": "`<state dir>/vfolders`",
}
KERNEL_DEFAULTS = {
    "endpoint": "`$BACKEND_ENDPOINT`, else the credentials file's, else `http://127.0.0.1:8090`",
    "access_key": "`$BACKEND_ACCESS_KEY`, else the credentials file's",
    "secret_key": "`$BACKEND_SECRET_KEY`, else the credentials file's",
    "image": "`$REMOTE_KERNEL_IMAGE`, else `'python:3'`",
    "session_name": "`$REMOTE_KERNEL_SESSION_NAME`, else `rk-<16 random hex digits>`",
}


def _help(trait: Any, *, cut_env: bool = True) -> str:
    text = " ".join((trait.help or "").split())
    if cut_env:  # the server's traits name their variable in a column of its own
        text = text.split(" Environment:")[0]
    return text.replace("|", "\\|")


def server_traits() -> dict[str, Any]:
    """The configurable traits of ``remote-kernel serve`` (``ServerApp``'s own)."""
    from remote_kernel.server.app import ServerApp

    return dict(sorted(ServerApp.class_own_traits(config=True).items()))


def kernel_traits() -> dict[str, Any]:
    """The configurable traits ``RemoteKernel`` adds to ipykernel's ``Kernel``."""
    from ipykernel.kernelbase import Kernel

    from remote_kernel.proxy.kernel import RemoteKernel

    inherited = set(Kernel.class_traits(config=True))
    return {
        name: trait
        for name, trait in sorted(RemoteKernel.class_traits(config=True).items())
        if name not in inherited
    }


def render() -> str:
    """``docs/server-settings.md``."""
    from remote_kernel.server.app import _env

    lines = [
        "# `remote-kernel serve` settings",
        "",
        "Generated from the `ServerApp` traits by `docs/gen_settings.py`; do not edit by hand.",
        "Each setting is a `--ServerApp.<name>=...` flag, a `c.ServerApp.<name> = ...` line in",
        "`remote_kernel_server_config.py` (current directory), and an environment variable; the",
        "variable is the default, a config file or the command line wins over it.",
        "",
        "| setting | environment | default | what it does |",
        "|---|---|---|---|",
    ]
    for name, trait in server_traits().items():
        default = SERVER_DEFAULTS.get(name) or f"`{trait.default_value_repr()}`"
        lines.append(f"| `{name}` | `{_env(name)}` | {default} | {_help(trait)} |")
    return "\n".join(lines) + "\n"


def render_kernel() -> str:
    """``docs/kernel-settings.md``."""
    lines = [
        "# Kernel settings",
        "",
        "Generated from the `RemoteKernel` traits by `docs/gen_settings.py`; do not edit by hand.",
        "Each setting is a `--RemoteKernel.<name>=...` flag in the kernelspec's `kernel.json`",
        "(`remote-kernel install` writes `endpoint`, `image`, `resources` and `sync_on_start`",
        "there), or a `c.RemoteKernel.<name> = ...` line in `jupyter_remote_kernel_config.py`",
        "(or `.json`) in a Jupyter config directory (`jupyter --paths` lists them). The command",
        "line wins over the file, the file over the environment variables named below. ipykernel's",
        "own `Kernel` settings apply as well.",
        "",
        "| setting | default | what it does |",
        "|---|---|---|",
    ]
    for name, trait in kernel_traits().items():
        default = KERNEL_DEFAULTS.get(name) or f"`{trait.default_value_repr()}`"
        lines.append(f"| `{name}` | {default} | {_help(trait, cut_env=False)} |")
    return "\n".join(lines) + "\n"


def write_all() -> list[Path]:
    """Write both references where they changed; return the files written."""
    written = []
    for target, text in ((TARGET, render()), (KERNEL_TARGET, render_kernel())):
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
            written.append(target)
    return written


if __name__ == "__main__":
    for path in write_all():
        print(f"wrote {path}")
