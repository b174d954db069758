"""Every ``web.AppKey`` of the server, in one place."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .keystore import KeyStore
from .sessions import SessionManager
from .settings import ServerSettings

settings_key = web.AppKey("settings_key", ServerSettings)
keystore_key = web.AppKey("keystore_key", KeyStore)
manager_key = web.AppKey("manager_key", SessionManager)
#: The access key a request was authenticated as (set by the auth middleware).
owner_key: Any = web.RequestKey("owner", str) if hasattr(web, "RequestKey") else "owner"
