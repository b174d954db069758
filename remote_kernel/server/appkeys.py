"""Every ``web.AppKey`` of the server, in one place."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .keystore import KeyStore
from .sessions import SessionManager

#: Plain settings the handlers read: extensions, poll hold/coalesce, debug, auth_required.
config_key = web.AppKey("config_key", dict[str, Any])
keystore_key = web.AppKey("keystore_key", KeyStore)
manager_key = web.AppKey("manager_key", SessionManager)
