"""``python -m remote_kernel``: the kernel (``-f {connection_file}``) or the CLI (a subcommand).

A kernel start goes through the fork server when one answers (:mod:`remote_kernel.proxy.launch`):
this process then only stands in for the kernel forked there. Otherwise the kernel runs here, and
a fork server is started for the next one.
"""

from __future__ import annotations

import sys


def _kernel_argv(argv: list[str]) -> bool:
    """Started as a kernel by a kernelspec (``-f {connection_file}`` first)."""
    return bool(argv) and (argv[0] in ("-f", "--f") or argv[0].startswith(("-f=", "--f=")))


def main() -> None:
    if _kernel_argv(sys.argv[1:]):
        from .proxy import launch

        if launch.enabled():
            try:
                sys.exit(launch.run(sys.argv))
            except launch.Unavailable:
                launch.spawn_server()
        run_kernel()
        return
    from .cli import SUBCOMMANDS

    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        from .cli import main as cli_main

        sys.exit(cli_main())
    run_kernel()


def run_kernel() -> None:
    """Run the proxy kernel in this process (``sys.argv`` has its options)."""
    from .proxy import early

    early.begin()  # the remote session is created while the kernel's modules load
    from .proxy.app import RemoteKernelApp

    RemoteKernelApp.launch_instance()


if __name__ == "__main__":
    main()
