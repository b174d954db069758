"""The route table, and nothing else."""

from __future__ import annotations

from aiohttp import web

from .. import protocol as p
from . import channel, openapi, streams
from . import folder_handlers as fh
from . import handlers as h
from .settings import ServerSettings


def setup_routes(app: web.Application, settings: ServerSettings) -> None:
    """Backend.AI v≥5 paths (``/session``), with the legacy ``/kernel`` aliases."""
    app.router.add_get("/", h.hello)
    app.router.add_get(openapi.OPENAPI_PATH, openapi.serve_openapi)
    app.router.add_get("/events/session", streams.session_events)
    # Virtual folders: each access key's own (remote_kernel/server/folders.py).
    app.router.add_post("/folders", fh.create_folder)
    app.router.add_get("/folders", fh.list_folders)
    app.router.add_delete("/folders", fh.delete_folder_by_id)
    app.router.add_get("/folders/_/id", fh.folder_id)
    app.router.add_get("/folders/{name}", fh.folder_info)
    app.router.add_delete("/folders/{name}", fh.delete_folder)
    for prefix in ("/session", "/kernel"):
        app.router.add_post(prefix, h.create_session)
        app.router.add_get(prefix, h.list_sessions)
        sid = prefix + "/{session_id}"
        app.router.add_get(sid, h.session_info)
        app.router.add_post(sid, h.execute)
        app.router.add_delete(sid, h.destroy_session)
        app.router.add_patch(sid, h.restart_session)
        app.router.add_post(sid + "/interrupt", h.interrupt_session)
        app.router.add_post(sid + "/complete", h.complete)
        app.router.add_get(sid + "/logs", h.logs)
        app.router.add_post(sid + "/upload", h.upload)
        app.router.add_post(sid + "/download", h.download)
        app.router.add_get(sid + "/download", h.download)
        app.router.add_get(sid + "/files", h.list_files)
        stream = "/stream" + sid
        app.router.add_get(stream + "/execute", streams.stream_execute)
        app.router.add_get(stream + "/pty", streams.stream_pty)
        if settings.offers(p.FEATURE_INSPECT):
            app.router.add_post(sid + "/inspect", h.inspect)
        if settings.offers(p.FEATURE_IS_COMPLETE):
            app.router.add_post(sid + "/is-complete", h.is_complete)
        if settings.offers(p.FEATURE_PUSH_CHANNEL):
            app.router.add_get(stream + "/channel", channel.push_channel)
