"""``RemoteKernelApp``: ``IPKernelApp`` running :class:`~remote_kernel.proxy.kernel.RemoteKernel`.

Besides the IPython profile files every ``IPKernelApp`` reads, it loads a Jupyter-style
``jupyter_remote_kernel_config.{py,json}`` from the Jupyter config path (notes §7), so
``c.RemoteKernel.image = "python:3"`` can live next to other Jupyter settings. The command line
(``--RemoteKernel.trait=value`` in ``kernel.json``) wins over the files, the files over the
environment-variable defaults.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from ipykernel.kernelapp import IPKernelApp
from jupyter_core.paths import jupyter_config_path
from traitlets import Type
from traitlets.config import Application

from .iopub_hold import holding_iopub
from .kernel import RemoteKernel

CONFIG_FILE_NAME = "jupyter_remote_kernel_config"


class RemoteKernelApp(IPKernelApp):
    """Launch the remote proxy kernel: ``python -m remote_kernel -f {connection_file}``."""

    name = "remote-kernel-kernel"
    description = "A Jupyter kernel that runs cells in a remote compute session."
    kernel_class = Type(
        RemoteKernel,
        klass="ipykernel.kernelbase.Kernel",
        help="The kernel class (a RemoteKernel subclass).",
    ).tag(config=True)  # type: ignore[assignment]
    classes = [*IPKernelApp.classes, RemoteKernel]  # keep IPKernelApp's, or --help-all breaks

    def initialize(self, argv: Any = None) -> None:
        # aiohttp (about 0.1 s to import) is first needed once the kernel runs: load it in a
        # thread meanwhile, so the kernel answers its first kernel_info that much sooner
        threading.Thread(target=_preload, name="remote-kernel-preload", daemon=True).start()
        super().initialize(argv)

    def init_iopub(self, context: Any) -> None:
        with holding_iopub():  # what it publishes before a client listens reaches that client
            super().init_iopub(context)

    def load_config_file(self, *args: Any, **kwargs: Any) -> None:
        super().load_config_file(*args, **kwargs)  # the IPython profile files
        Application.load_config_file(self, CONFIG_FILE_NAME, path=jupyter_config_path())


def _preload() -> None:
    for name in ("aiohttp", "aiohttp.payload"):
        try:
            importlib.import_module(name)
        except Exception:  # the thread that needs it reports it
            return


main = RemoteKernelApp.launch_instance

if __name__ == "__main__":
    main()
