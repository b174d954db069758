"""The proxy kernel: an ipykernel kernel that runs every cell in a remote compute session.

Modules, one concern each:

- ``kernel``: :class:`RemoteKernel`, its settings (traits) and ``do_*`` hooks;
- ``session``: the remote session's life (create, heartbeat, replace, destroy) and transport;
- ``cell``: one cell (run loop, output, stdin, the interrupt race, the reply);
- ``magic_cell``: a cell with ``%remote`` lines, run in order with its code; ``magics`` (pure)
  parses them, ``commands`` runs them, ``transfer`` moves files over the file API (``untar``
  unpacks downloads, ``sync`` plans ``%remote sync``, ``progress`` shows long transfers);
- ``transports`` and ``channel``: how runs travel (HTTP polling; the push channel);
- ``stdin``: ``input_request`` without blocking the event loop;
- ``replies``: reply shaping, pure; ``history``: the cells this kernel ran, pure;
- ``app``: :class:`RemoteKernelApp` (``python -m remote_kernel -f {connection_file}``).

The run loop's state machine (:mod:`remote_kernel.runloop`) and the HTTP client
(:mod:`remote_kernel.client`) live beside this package: they need no kernel.
"""

from __future__ import annotations

__all__ = ["RemoteKernel", "RemoteKernelApp"]


def __getattr__(name: str) -> object:
    """Import the kernel lazily, so the pure modules here load without ipykernel (nor typing:
    the kernel's launcher, ``launch``, is all standard library and quick to import)."""
    if name == "RemoteKernel":
        from .kernel import RemoteKernel

        return RemoteKernel
    if name == "RemoteKernelApp":
        from .app import RemoteKernelApp

        return RemoteKernelApp
    raise AttributeError(name)
