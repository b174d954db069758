"""remote_kernel: run Jupyter cells in remote compute sessions over the Backend.AI run-loop API.

The package root stays light (no ipykernel, aiohttp or zmq import) so that the pure modules
(``protocol``, ``iopub``, ``auth``, ``errors``) can be used on their own. The parts:

- ``remote_kernel.proxy``: the proxy kernel (``python -m remote_kernel -f ...``);
- ``remote_kernel.client.RunLoopClient``: the async run-loop client it uses, and
  ``remote_kernel.runloop.RunState``, the run loop's pure state machine;
- ``remote_kernel.server``: the compute-session server (``remote-kernel serve``).
"""

from ._version import __version__

__all__ = ["__version__"]
