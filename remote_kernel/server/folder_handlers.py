"""HTTP handlers of ``/folders`` (Backend.AI's vfolder API), scoped to the caller's folders.

What the official SDK sends (``ai.backend.client.func.vfolder``, 23.9 and 26.x):

- ``VFolder.create(name)``: ``POST /folders`` ``{"name", "host", ...}`` → 201, the folder.
- ``VFolder.list()``: ``GET /folders`` (body ``{"all": false}``) → 200, a list of folders.
- ``VFolder(name).info()``: 23.9 ``GET /folders/{name}``; 26.x first ``GET /folders/_/id``
  (body ``{"name"}``) → ``{"id", "name"}``, then ``GET /folders/{id hex}``.
- ``VFolder(name).delete()``: 23.9 ``DELETE /folders/{name}``; 26.x ``DELETE /folders`` with
  ``{"id"}`` (as ``VFolder.delete_by_id``) → 204.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..errors import InvalidAPIParamsError
from .appkeys import manager_key, owner_key
from .folders import Folder, FolderStore
from .handlers import json_response, read_json


def _store(request: web.Request) -> FolderStore:
    return request.app[manager_key].vfolders


async def create_folder(request: web.Request) -> web.Response:
    body = await read_json(request)
    if body.get("unmanaged_path") or body.get("unmanagedPath"):
        raise InvalidAPIParamsError("Unmanaged folders (unmanaged_path) are not supported.")
    if body.get("group") or body.get("groupId") or body.get("group_id"):
        raise InvalidAPIParamsError("Group folders are not supported: a folder is its key's.")
    folder = _store(request).create(request[owner_key], body.get("name"))
    return json_response(folder.entry(), status=201)


async def list_folders(request: web.Request) -> web.Response:
    await read_json(request)  # malformed bodies are 400 here too; "all" changes nothing
    return json_response([f.entry() for f in _store(request).list(request[owner_key])])


async def folder_id(request: web.Request) -> web.Response:
    """``GET /folders/_/id``: the id of the caller's folder named in the body or query."""
    body = await read_json(request)
    keys = ("name", "vfolder_name", "vfolderName")
    name = next((body[k] for k in keys if body.get(k)), None)
    if name is None:
        name = next((request.query[k] for k in keys if request.query.get(k)), None)
    if not isinstance(name, str):
        raise InvalidAPIParamsError("'name' (the folder's name) is required.")
    folder = _store(request).get(request[owner_key], name)
    return json_response({"id": folder.id, "name": folder.name})


async def folder_info(request: web.Request) -> web.Response:
    folder = _store(request).get(request[owner_key], request.match_info["name"])
    return json_response(await asyncio.to_thread(folder.info))


async def delete_folder(request: web.Request) -> web.Response:
    """``DELETE /folders/{name or id}``."""
    await read_json(request)
    return await _delete(request, request.match_info["name"])


async def delete_folder_by_id(request: web.Request) -> web.Response:
    """``DELETE /folders`` with ``{"id"}`` (the 26.x SDK's ``delete()``)."""
    body = await read_json(request)
    key = body.get("id") or body.get("vfolderId")
    if not isinstance(key, str) or not key:
        raise InvalidAPIParamsError("'id' (the folder's id) is required.")
    return await _delete(request, key)


async def _delete(request: web.Request, key: str) -> web.Response:
    owner = request[owner_key]
    store = _store(request)
    folder: Folder = store.get(owner, key)
    target = folder.path.resolve()
    sessions = request.app[manager_key].owned_by(owner)
    users = [s.name for s in sessions if target in s.mounts.values()]
    if users:
        raise InvalidAPIParamsError(
            f"Folder {folder.name!r} is mounted by session(s) {', '.join(sorted(users))}; "
            "destroy them first.",
            data={"sessions": sorted(users)},
        )
    trash = store.detach(folder)
    await asyncio.to_thread(store.purge, trash)
    return web.Response(status=204)
