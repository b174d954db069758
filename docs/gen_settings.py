"""Write docs/server-settings.md from the ServerApp traits (their help text is the documentation).

Run: ``python docs/gen_settings.py``; tests/test_docs.py checks the file is current.
"""

from __future__ import annotations

from pathlib import Path

from remote_kernel.server.app import ServerApp, _env

HERE = Path(__file__).resolve().parent
TARGET = HERE / "server-settings.md"


def render() -> str:
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
    for name, trait in sorted(ServerApp.class_own_traits(config=True).items()):
        default = f"`{trait.default_value_repr()}`"
        if name == "state_dir":
            default = "`$XDG_STATE_HOME/remote-kernel`"
        elif name == "vfolder_root":
            default = "`<state dir>/vfolders`"
        help_text = " ".join(trait.help.split()).split(" Environment:")[0]
        lines.append(f"| `{name}` | `{_env(name)}` | {default} | {help_text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
