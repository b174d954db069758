"""``python -m remote_kernel``: the kernel (``-f {connection_file}``) or the CLI (a subcommand)."""

from __future__ import annotations

import sys


def main() -> None:
    from .cli import SUBCOMMANDS

    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        from .cli import main as cli_main

        sys.exit(cli_main())
    from .proxy import early

    early.begin()  # the remote session is created while the kernel's modules load
    from .proxy.app import RemoteKernelApp

    RemoteKernelApp.launch_instance()


if __name__ == "__main__":
    main()
