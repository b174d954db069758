"""``ServerSettings``: the server's settings as one typed, frozen value (read by every handler).

:class:`~remote_kernel.server.app.ServerApp` builds it from its traits; tests build it directly.
It is also the one place that decides what a client is offered: the base layer alone
(``extensions=False``, exactly a Backend.AI manager) or the base layer plus every
``remote_kernel`` extension (protocol §2.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import protocol as p

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """What the HTTP and WebSocket handlers need to know; see ``ServerApp`` for each meaning."""

    extensions: bool = True
    auth_required: bool = True
    poll_hold: float = 1.0
    poll_coalesce: float = 0.005
    push_coalesce: float = 0.0
    orphan_timeout: float = 0.0  # GET / reports it to clients that hold leases
    debug: bool = False
    max_request_bytes: int = 16 * MIB
    max_upload_files: int = 100
    max_upload_bytes: int = 64 * MIB
    max_download_bytes: int = 64 * MIB
    #: How sessions are isolated (``GET /`` reports it): sandbox, network, limits.
    isolation: dict[str, Any] = field(
        default_factory=lambda: {"sandbox": "none", "network": True, "limits": "rlimit"}
    )

    @property
    def features(self) -> tuple[str, ...]:
        """The extensions ``GET /`` lists: all of them, or none on a base-layer server."""
        return p.FEATURES if self.extensions else ()

    def offers(self, feature: str) -> bool:
        return feature in self.features
