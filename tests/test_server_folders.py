"""Folders belong to the key that made them (issue "A server people can share", 3).

The aiohttp app runs in process (pytest-aiohttp's ``aiohttp_client``) with authentication on
and two keypairs, A and B, each request signed like the SDK signs it. A's folders can be
neither listed, read, mounted nor deleted by B, and no error B gets names one of A's folders.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from remote_kernel import protocol as p
from remote_kernel.auth import Keypair, sign_headers
from remote_kernel.server.app import make_app
from remote_kernel.server.folders import owner_dir_name
from remote_kernel.server.keystore import KeyStore
from remote_kernel.server.sessions import SessionManager
from remote_kernel.server.settings import ServerSettings

pytestmark = pytest.mark.timeout(120)

PROBS = "https://api.backend.ai/probs/"
A_SECRET_FOLDERS = ("data", "a-private-notes")


class Caller:
    """One keypair's signed JSON calls against the in-process app."""

    def __init__(self, client: Any, keypair: Keypair) -> None:
        self.client = client
        self.keypair = keypair

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        headers.update(
            sign_headers(
                self.keypair, method=method, path_qs=path,
                host=f"{self.client.host}:{self.client.port}",
                content_type="application/json", version=p.API_VERSION,
            )
        )  # fmt: skip
        data = json.dumps(body) if body is not None else None
        resp = await self.client.request(method, path, data=data, headers=headers)
        text = await resp.text()
        return resp.status, json.loads(text) if text else None

    async def create_session(self, config: dict[str, Any]) -> tuple[int, Any]:
        name = f"fold-{uuid.uuid4().hex[:8]}"
        return await self.call("POST", "/session", {"image": "python:3", "name": name,
                                                    "config": config})  # fmt: skip

    async def run(self, sid: str, code: str) -> tuple[str, dict[str, Any]]:
        """Run ``code`` to its end; its stdout and last result."""
        run_id = uuid.uuid4().hex
        mode, out = "query", ""
        while True:
            status, body = await self.call(
                "POST", f"/session/{sid}", {"mode": mode, "code": code, "runId": run_id}
            )
            assert status == 200, body
            result = body["result"]
            out += "".join(r[1] for r in result["console"] if r[0] == "stdout")
            if result["status"] not in p.NON_TERMINAL:
                return out, result
            mode, code = "continue", ""


@pytest.fixture
async def app(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[tuple[Caller, Caller, Path]]:
    store = KeyStore(tmp_path / "state")
    pair_a, pair_b = store.create(), store.create()
    manager = SessionManager(tmp_path / "state")
    client = await aiohttp_client(make_app(manager, store, ServerSettings(auth_required=True)))
    yield Caller(client, pair_a), Caller(client, pair_b), manager.vfolder_root
    await manager.shutdown_all()
    await client.close()


def assert_problem(body: Any, kind: str, *, asked: str = "") -> None:
    """A problem of ``kind`` whose message and data name none of A's folders but ``asked``."""
    assert body["type"] == PROBS + kind, body
    text = body["msg"] + json.dumps(body.get("data"))
    for name in A_SECRET_FOLDERS:
        if name != asked:
            assert name not in text, (name, body)


async def test_folders_are_their_keys_own(app: tuple[Caller, Caller, Path]) -> None:
    a, b, root = app
    # A makes two folders and writes into one through a session that mounts it.
    for name in A_SECRET_FOLDERS:
        status, body = await a.call("POST", "/folders", {"name": name, "host": None,
                                                          "permission": "rw"})  # fmt: skip
        assert status == 201, body
        assert body["name"] == name and len(uuid.UUID(body["id"]).hex) == 32
    a_data = root / owner_dir_name(a.keypair.access_key) / "data"
    assert a_data.is_dir()
    assert a.keypair.access_key not in str(a_data)  # paths never show a key
    status, body = await a.create_session({"mounts": ["data"]})
    assert status == 201, body
    sid_a = body["sessionId"]
    _, result = await a.run(sid_a, "open('data/secret.txt', 'w').write('A wrote this')")
    assert result["exitCode"] == 0
    assert (a_data / "secret.txt").read_text() == "A wrote this"

    # A's list has both, B's none; B cannot read, mount or delete A's.
    status, listed = await a.call("GET", "/folders")
    assert status == 200 and sorted(f["name"] for f in listed) == sorted(A_SECRET_FOLDERS)
    status, listed = await b.call("GET", "/folders")
    assert (status, listed) == (200, [])
    a_id = next(f["id"] for f in (await a.call("GET", "/folders"))[1] if f["name"] == "data")
    for method, path in [("GET", "/folders/data"), ("GET", f"/folders/{a_id}"),
                         ("DELETE", "/folders/data"), ("DELETE", f"/folders/{a_id}")]:  # fmt: skip
        status, body = await b.call(method, path)
        assert status == 404, (method, path, body)
        assert_problem(body, "object-not-found", asked=path.rsplit("/", 1)[1])
    status, body = await b.call("DELETE", "/folders", {"id": a_id})
    assert status == 404
    assert_problem(body, "object-not-found")
    status, body = await b.call("GET", "/folders/_/id", {"name": "data"})
    assert status == 404
    assert_problem(body, "object-not-found", asked="data")
    for asked, config in [
        ("data", {"mounts": ["data"]}),
        ("a-private-notes", {"mount_map": {"a-private-notes": "/home/work/x"}}),
    ]:
        status, body = await b.create_session(config)
        assert status == 404, body
        assert_problem(body, "object-not-found", asked=asked)
        assert body["data"] == {"available": []}
    assert (a_data / "secret.txt").read_text() == "A wrote this"  # B's calls changed nothing

    # B makes its own "data": no conflict with A's, and it sees only its own content.
    status, body = await b.call("POST", "/folders", {"name": "data"})
    assert status == 201, body
    assert body["id"] != a_id
    status, body = await b.create_session({"mount_map": {"data": "/home/work/mine"}})
    assert status == 201, body
    sid_b = body["sessionId"]
    out, _ = await b.run(sid_b, "import os; print(sorted(os.listdir('mine')))\n"
                                "n = open('mine/b.txt', 'w').write('B')")  # fmt: skip
    assert out == "[]\n"
    out, _ = await a.run(sid_a, "import os; print(sorted(os.listdir('data')))")
    assert out == "['secret.txt']\n"
    status, body = await b.create_session({"mounts": ["a-private-notes"]})
    assert status == 404 and body["type"] == PROBS + "object-not-found"
    assert body["data"] == {"available": ["data"]}  # B's own "data" only
    assert body["msg"].endswith("Your folders: data (create one with POST /folders).")
    status, listed = await b.call("GET", "/folders")
    assert [f["name"] for f in listed] == ["data"]

    # B's session cannot reach A's folder through the file API either.
    status, body = await b.call("GET", f"/session/{sid_b}/files?path=mine")
    assert status == 200 and "b.txt" in body["files"] and "secret.txt" not in body["files"]


async def test_info_id_and_delete(app: tuple[Caller, Caller, Path]) -> None:
    a, _, root = app
    status, made = await a.call("POST", "/folders", {"name": "scratch"})
    assert status == 201
    status, body = await a.call("GET", "/folders/_/id", {"name": "scratch"})
    assert (status, body) == (200, {"id": made["id"], "name": "scratch"})
    status, body = await a.call("GET", "/folders/_/id?name=scratch")
    assert status == 200 and body["id"] == made["id"]
    status, info = await a.call("GET", f"/folders/{made['id']}")
    assert status == 200 and info["name"] == "scratch" and info["num_files"] == 0
    (root / owner_dir_name(a.keypair.access_key) / "scratch" / "f.txt").write_text("12345")
    status, info = await a.call("GET", "/folders/scratch")
    assert (info["num_files"], info["used_bytes"]) == (1, 5)

    # Mounted by a live session: not deletable until the session is gone.
    status, body = await a.create_session({"mounts": ["scratch"]})
    assert status == 201
    sid = body["sessionId"]
    status, body = await a.call("DELETE", "/folders/scratch")
    assert status == 400, body
    assert_problem(body, "invalid-api-params")
    await a.call("DELETE", f"/session/{sid}")

    # 23.9 SDK: DELETE /folders/{name}; a deleted folder is gone and cannot be mounted.
    assert (await a.call("DELETE", "/folders/scratch"))[0] == 204
    assert not (root / owner_dir_name(a.keypair.access_key) / "scratch").exists()
    assert (await a.call("GET", "/folders/scratch"))[0] == 404
    assert (await a.call("GET", "/folders"))[1] == []
    status, body = await a.create_session({"mounts": ["scratch"]})
    assert status == 404, body
    assert body["data"] == {"available": []}

    # 26.x SDK: DELETE /folders {"id"}; the name is free again, with a new id.
    status, again = await a.call("POST", "/folders", {"name": "scratch"})
    assert status == 201 and again["id"] != made["id"]
    assert (await a.call("GET", "/folders/scratch"))[1]["num_files"] == 0  # old files gone
    assert (await a.call("DELETE", "/folders", {"id": str(uuid.UUID(again["id"]))}))[0] == 204
    assert (await a.call("DELETE", "/folders", {"id": again["id"]}))[0] == 404


@pytest.mark.parametrize(
    "name", ["", ".hidden", "..", "a/b", "../x", "x" * 65, "sp ace", "é", 7, None, "-dash", "abc\n"]
)
async def test_bad_names_are_400(app: tuple[Caller, Caller, Path], name: Any) -> None:
    a, _, root = app
    status, body = await a.call("POST", "/folders", {"name": name})
    assert status == 400, body
    assert_problem(body, "invalid-api-params")
    status, body = await a.create_session({"mounts": [name]})
    assert status == 400, body
    assert (await a.call("GET", "/folders"))[1] == []
    assert not root.exists()  # nothing was made on disk


async def test_duplicate_is_409_and_unsupported_kinds_400(app: tuple[Caller, Caller, Path]) -> None:
    a, b, _ = app
    assert (await a.call("POST", "/folders", {"name": "twice"}))[0] == 201
    status, body = await a.call("POST", "/folders", {"name": "twice"})
    assert status == 409
    assert_problem(body, "vfolder-already-exists")
    assert (await b.call("POST", "/folders", {"name": "twice"}))[0] == 201  # B's own
    for extra in ({"group": "some-project"}, {"unmanaged_path": "/etc"}):
        status, body = await a.call("POST", "/folders", {"name": "other", **extra})
        assert status == 400, body
    status, body = await a.call("DELETE", "/folders", {})
    assert status == 400


async def test_legacy_folders_at_the_root_are_not_mountable(
    app: tuple[Caller, Caller, Path],
) -> None:
    a, _, root = app
    (root / "legacy-shared").mkdir(parents=True)
    status, body = await a.create_session({"mounts": ["legacy-shared"]})
    assert status == 404
    assert_problem(body, "object-not-found", asked="legacy-shared")
    assert body["data"] == {"available": []}
    assert (await a.call("GET", "/folders"))[1] == []


async def test_mount_by_id(app: tuple[Caller, Caller, Path]) -> None:
    """``config.mount_ids`` / ``mount_id_map`` (the 26.x SDK): the caller's folder ids only."""
    a, b, root = app
    status, made = await a.call("POST", "/folders", {"name": "by-id"})
    assert status == 201
    (root / owner_dir_name(a.keypair.access_key) / "by-id" / "x.txt").write_text("x")
    dashed = str(uuid.UUID(made["id"]))
    status, body = await b.create_session({"mount_ids": [dashed]})
    assert status == 404, body
    assert_problem(body, "object-not-found")
    assert body["data"] == {"available": []}
    status, body = await b.create_session({"mount_ids": ["not-a-uuid"]})
    assert status == 400, body
    status, body = await a.create_session({"mount_id_map": {dashed: "/home/work/here"}})
    assert status == 201, body
    out, _ = await a.run(body["sessionId"], "print(open('here/x.txt').read())")
    assert out == "x\n"
