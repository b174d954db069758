"""Comms and widgets through the proxy, the same as with a local ``python3`` kernel.

Each test runs against both kernels, started through jupyter_client, with the same assertions:
the remote kernel (``python -m remote_kernel`` against a real server with the ``comms``
extension) and ipykernel itself. The client below plays the frontend: it sends comm messages on
the shell channel the way JupyterLab's widget manager does and reads IOPub.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient

from remote_kernel.iopub import WIDGET_TEXT

from .conftest import ServerProcess
from .kernel_helpers import install_kernelspec, running_kernel

pytestmark = pytest.mark.timeout(180)

REMOTE = "remote-python-comms"
KERNELS = ["remote", "python3"]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
Msg = dict[str, Any]


class Frontend:
    """A kernel client that keeps every IOPub message it reads (in order)."""

    def __init__(self, kc: BlockingKernelClient) -> None:
        self.kc = kc
        self.seen: list[Msg] = []

    def _pump(self, timeout: float) -> Msg | None:
        try:
            msg = self.kc.get_iopub_msg(timeout=timeout)
        except Exception:
            return None
        self.seen.append(msg)
        return msg

    def until(self, predicate: Callable[[Msg], bool], timeout: float = 30) -> Msg:
        """Read IOPub until a message (already seen or new) satisfies ``predicate``."""
        for msg in self.seen:
            if predicate(msg):
                return msg
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self._pump(min(1.0, deadline - time.monotonic()))
            if msg is not None and predicate(msg):
                return msg
        raise AssertionError(f"no such message within {timeout} s; saw {self._summary()}")

    def idle(self, msg_id: str, timeout: float = 30) -> None:
        self.until(lambda m: _parent(m) == msg_id and _is_idle(m), timeout)

    def of(self, msg_id: str, *types: str) -> list[Msg]:
        """Messages seen so far with parent ``msg_id`` (of ``types``, if given)."""
        return [
            m for m in self.seen if _parent(m) == msg_id and (not types or m["msg_type"] in types)
        ]

    def _summary(self) -> str:
        return ", ".join(f"{m['msg_type']}<{_parent(m)[:6]}>" for m in self.seen[-30:])

    def execute(self, code: str, timeout: float = 60) -> tuple[str, Msg]:
        """Run ``code``; return its msg_id and reply, after its ``idle``."""
        msg_id = self.kc.execute(code, allow_stdin=False)
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        self.idle(msg_id, timeout)
        return msg_id, reply["content"]

    def ok(self, code: str) -> str:
        msg_id, reply = self.execute(code)
        assert reply["status"] == "ok", reply
        return msg_id

    def stdout(self, msg_id: str) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.of(msg_id, "stream")
            if m["content"]["name"] == "stdout"
        )

    def send(
        self, msg_type: str, content: dict[str, Any], buffers: list[bytes] | None = None
    ) -> str:
        """Send a comm message (or comm_info_request) as a frontend does; return its msg_id."""
        msg = self.kc.session.msg(msg_type, content)
        if buffers:
            msg["buffers"] = buffers
        self.kc.shell_channel.send(msg)
        return str(msg["header"]["msg_id"])

    def comm_opens(self, msg_id: str, model: str) -> list[Msg]:
        return [
            m
            for m in self.of(msg_id, "comm_open")
            if m["content"]["data"].get("state", {}).get("_model_name") == model
        ]


def _parent(msg: Msg) -> str:
    return str(msg.get("parent_header", {}).get("msg_id", ""))


def _steady(value: Any) -> Any:
    """A widget value without tqdm's measured rate (``1234.5it/s``)."""
    return re.sub(r"[\d.]+it/s", "Nit/s", value) if isinstance(value, str) else value


def _is_idle(msg: Msg) -> bool:
    return msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"


@pytest.fixture(scope="module")
def remote_spec(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> str:
    install_kernelspec(REMOTE, server.env, prefix=tmp_path_factory.mktemp("spec"))
    return REMOTE


@pytest.fixture(scope="module", params=KERNELS)
def frontend(request: pytest.FixtureRequest) -> Iterator[Frontend]:
    name = request.getfixturevalue("remote_spec") if request.param == "remote" else "python3"
    with running_kernel(name) as (_, kc):
        fe = Frontend(kc)
        fe.ok("import ipywidgets as w")
        yield fe


def test_widget_comm_open_carries_state_before_its_view(frontend: Frontend) -> None:
    msg_id = frontend.ok("s = w.IntSlider(value=3, description='n')\ndisplay(s)")
    opens = frontend.comm_opens(msg_id, "IntSliderModel")
    assert len(opens) == 1
    opened = opens[0]
    assert opened["content"]["target_name"] == "jupyter.widget"
    assert opened["content"]["data"]["state"]["value"] == 3
    assert opened["content"]["data"]["state"]["description"] == "n"
    assert opened["metadata"]["version"].startswith("2.")  # the widget protocol version
    views = [m for m in frontend.of(msg_id, "display_data") if WIDGET_VIEW in m["content"]["data"]]
    assert len(views) == 1
    assert views[0]["content"]["data"][WIDGET_VIEW]["model_id"] == opened["content"]["comm_id"]
    assert frontend.seen.index(opened) < frontend.seen.index(views[0])
    assert frontend.of(msg_id, "stream") == []  # no text form, no note


def test_frontend_state_update_is_seen_by_the_kernel(frontend: Frontend) -> None:
    msg_id = frontend.ok("s = w.IntSlider(value=1)\ndisplay(s)")
    comm_id = frontend.comm_opens(msg_id, "IntSliderModel")[0]["content"]["comm_id"]
    update = {"method": "update", "state": {"value": 7}, "buffer_paths": []}
    sent = frontend.send("comm_msg", {"comm_id": comm_id, "data": update})
    frontend.idle(sent)
    echo = [
        m for m in frontend.of(sent, "comm_msg") if m["content"]["data"]["method"] == "echo_update"
    ]
    assert [m["content"]["data"]["state"] for m in echo] == [{"value": 7}]
    assert frontend.stdout(frontend.ok("print(s.value)")) == "7\n"


def test_kernel_state_change_reaches_the_frontend(frontend: Frontend) -> None:
    msg_id = frontend.ok("s = w.IntSlider()\ndisplay(s)")
    comm_id = frontend.comm_opens(msg_id, "IntSliderModel")[0]["content"]["comm_id"]
    changed = frontend.ok("s.value = 11")
    updates = [m["content"] for m in frontend.of(changed, "comm_msg")]
    assert updates == [
        {
            "comm_id": comm_id,
            "data": {"method": "update", "state": {"value": 11}, "buffer_paths": []},
        }
    ]


def test_button_callback_output_has_the_comm_msg_as_parent(frontend: Frontend) -> None:
    msg_id = frontend.ok(
        "clicks = []\nb = w.Button(description='go')\n"
        "b.on_click(lambda _: (clicks.append(1), print('clicked', len(clicks))))\ndisplay(b)"
    )
    comm_id = frontend.comm_opens(msg_id, "ButtonModel")[0]["content"]["comm_id"]
    click = {"method": "custom", "content": {"event": "click"}}
    sent = [frontend.send("comm_msg", {"comm_id": comm_id, "data": click}) for _ in range(2)]
    for n, msg in enumerate(sent, 1):
        frontend.idle(msg)
        outputs = frontend.of(msg, "stream")
        assert [(m["content"]["name"], m["content"]["text"]) for m in outputs] == [
            ("stdout", f"clicked {n}\n")
        ]
        idle = frontend.until(lambda m, msg=msg: _parent(m) == msg and _is_idle(m))
        assert frontend.seen.index(outputs[0]) < frontend.seen.index(idle)
    assert frontend.stdout(frontend.ok("print(len(clicks))")) == "2\n"


def test_output_widget_captures_by_the_frontends_msg_id(frontend: Frontend) -> None:
    shown = frontend.ok("out = w.Output()\ndisplay(out)")
    comm_id = frontend.comm_opens(shown, "OutputModel")[0]["content"]["comm_id"]
    cell = frontend.ok("with out:\n    print('inside')\nprint('outside')")
    states = [
        m["content"]["data"]["state"]
        for m in frontend.of(cell, "comm_msg")
        if m["content"]["comm_id"] == comm_id and m["content"]["data"]["method"] == "update"
    ]
    assert states == [{"msg_id": cell}, {"msg_id": ""}]  # the frontend's own id
    assert frontend.stdout(cell) == "inside\noutside\n"


def test_output_widget_in_a_callback_captures_by_the_comm_msg(frontend: Frontend) -> None:
    shown = frontend.ok(
        "log = w.Output()\nbtn = w.Button()\n"
        "def on(_):\n    with log:\n        print('from the callback')\n"
        "btn.on_click(on)\ndisplay(btn, log)"
    )
    button = frontend.comm_opens(shown, "ButtonModel")[0]["content"]["comm_id"]
    log_id = frontend.comm_opens(shown, "OutputModel")[0]["content"]["comm_id"]
    click = {"method": "custom", "content": {"event": "click"}}
    sent = frontend.send("comm_msg", {"comm_id": button, "data": click})
    frontend.idle(sent)
    states = [
        m["content"]["data"]["state"]
        for m in frontend.of(sent, "comm_msg")
        if m["content"]["comm_id"] == log_id
    ]
    assert states == [{"msg_id": sent}, {"msg_id": ""}]
    assert frontend.stdout(sent) == "from the callback\n"


def test_interact_reruns_its_function_into_its_output(frontend: Frontend) -> None:
    shown = frontend.ok("@w.interact(x=3)\ndef shout(x):\n    print('x is', x)")
    slider = frontend.comm_opens(shown, "IntSliderModel")[0]["content"]["comm_id"]
    output = frontend.comm_opens(shown, "OutputModel")[0]["content"]["comm_id"]
    assert frontend.stdout(shown) == "x is 3\n"
    update = {"method": "update", "state": {"value": 7}, "buffer_paths": []}
    sent = frontend.send("comm_msg", {"comm_id": slider, "data": update})
    frontend.idle(sent)
    assert frontend.stdout(sent) == "x is 7\n"
    captured = [
        m["content"]["data"]["state"]
        for m in frontend.of(sent, "comm_msg")
        if m["content"]["comm_id"] == output and "msg_id" in m["content"]["data"].get("state", {})
    ]
    assert captured == [{"msg_id": sent}, {"msg_id": ""}]


def test_tqdm_auto_bar_ends_at_100_percent(frontend: Frontend) -> None:
    cell = frontend.ok("from tqdm.auto import tqdm\nfor i in tqdm(range(40)):\n    pass")
    bars = frontend.comm_opens(cell, "FloatProgressModel") or frontend.comm_opens(
        cell, "IntProgressModel"
    )
    assert len(bars) == 1
    bar = bars[0]["content"]["comm_id"]
    values = [
        m["content"]["data"]["state"]["value"]
        for m in frontend.of(cell, "comm_msg")
        if m["content"]["comm_id"] == bar and "value" in m["content"]["data"].get("state", {})
    ]
    assert values and values[-1] == 40
    assert bars[0]["content"]["data"]["state"]["max"] == 40
    texts = [
        str(m["content"]["data"].get("state", {}).get("value", ""))
        for m in frontend.of(cell, "comm_msg", "comm_open")
        if m["content"]["data"].get("state", {}).get("_model_name", "HTMLModel") == "HTMLModel"
    ]
    assert any("40/40" in text for text in texts), texts


def test_comm_info_lists_the_kernels_comms(frontend: Frontend) -> None:
    shown = frontend.ok("t = w.Text('x')")
    comm_id = frontend.comm_opens(shown, "TextModel")[0]["content"]["comm_id"]
    msg_id = frontend.kc.comm_info(target_name="jupyter.widget")
    reply = frontend.kc.get_shell_msg(timeout=30)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["comms"][comm_id] == {"target_name": "jupyter.widget"}
    frontend.ok("t.close()")
    frontend.kc.comm_info(target_name="jupyter.widget")
    assert comm_id not in frontend.kc.get_shell_msg(timeout=30)["content"]["comms"]


def test_thread_output_after_its_cell_keeps_the_cells_parent(frontend: Frontend) -> None:
    cell = frontend.ok(
        "import threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(0.5), print('late'))).start()"
    )
    assert frontend.stdout(cell) == ""
    late = frontend.until(lambda m: _parent(m) == cell and m["msg_type"] == "stream", timeout=20)
    assert late["content"] == {"name": "stdout", "text": "late\n"}


def test_custom_comm_target_round_trips_a_binary_buffer(frontend: Frontend) -> None:
    frontend.ok(
        "def _echo(comm, open_msg):\n"
        "    @comm.on_msg\n"
        "    def _got(msg):\n"
        "        comm.send({'got': msg['content']['data']},\n"
        "                  buffers=[bytes(reversed(bytes(b))) for b in msg['buffers']])\n"
        "get_ipython().kernel.comm_manager.register_target('echo', _echo)"
    )
    comm_id = uuid.uuid4().hex
    opened = frontend.send("comm_open", {"comm_id": comm_id, "target_name": "echo", "data": {}})
    frontend.idle(opened)
    payload = bytes([0, 1, 2, 255]) * 1000
    sent = frontend.send("comm_msg", {"comm_id": comm_id, "data": {"n": 1}}, buffers=[payload])
    frontend.idle(sent)
    replies = frontend.of(sent, "comm_msg")
    assert len(replies) == 1
    assert replies[0]["content"] == {"comm_id": comm_id, "data": {"got": {"n": 1}}}
    assert [bytes(b) for b in replies[0]["buffers"]] == [payload[::-1]]
    closed = frontend.send("comm_close", {"comm_id": comm_id, "data": {}})
    frontend.idle(closed)
    frontend.kc.comm_info(target_name="echo")
    assert frontend.kc.get_shell_msg(timeout=30)["content"]["comms"] == {}


def test_notebook_widget_state_is_saved_by_nbclient(
    remote_spec: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """nbclient's ``store_widget_state``: the same models and values in the notebook's metadata."""
    import nbformat
    from nbclient import NotebookClient

    cells = [
        "import ipywidgets as w\ns = w.IntSlider(value=4, max=9)\ns",
        "s.value = 6",
        "from tqdm.auto import tqdm\nfor i in tqdm(range(25)):\n    pass",
    ]

    def saved(kernel: str) -> list[tuple[str, Any, Any]]:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
        NotebookClient(nb, kernel_name=kernel, timeout=60, store_widget_state=True).execute()
        state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
        views = [
            o["data"][WIDGET_VIEW]["model_id"]
            for c in nb.cells
            for o in c.outputs
            if WIDGET_VIEW in o.get("data", {})
        ]
        assert views and all(v in state for v in views)
        return sorted(
            (m["model_name"], _steady(m["state"].get("value")), m["state"].get("max"))
            for m in state.values()
        )

    remote, local = saved(remote_spec), saved("python3")
    assert remote == local
    assert ("IntSliderModel", 6, 9) in remote
    assert ("FloatProgressModel", 25.0, 25.0) in remote or ("FloatProgressModel", 25, 25) in remote


@pytest.fixture(scope="module")
def base_spec(base_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> str:
    install_kernelspec("remote-python-base-comms", base_server.env,
                       prefix=tmp_path_factory.mktemp("basespec"))  # fmt: skip
    return "remote-python-base-comms"


def test_without_the_extension_widgets_show_as_text_and_nothing_hangs(base_spec: str) -> None:
    """A plain Backend.AI manager carries no comms: the widget's text form and one note; a
    frontend's comm messages and comm_info are answered at once, with nothing."""
    with running_kernel(base_spec) as (_, kc):
        fe = Frontend(kc)
        cell = fe.ok("import ipywidgets as w\ns = w.IntSlider(value=2)\ndisplay(s)")
        assert fe.of(cell, "comm_open") == []
        shown = [m["content"]["data"] for m in fe.of(cell, "display_data")]
        assert shown == [{"text/plain": WIDGET_TEXT}]
        notes = [m["content"]["text"] for m in fe.of(cell, "stream")]
        assert len(notes) == 1 and "1 interactive widget(s) shown as text" in notes[0]
        started = time.monotonic()
        sent = fe.send("comm_msg", {"comm_id": "nope", "data": {"method": "update", "state": {}}})
        fe.idle(sent, timeout=10)
        kc.comm_info()
        assert kc.get_shell_msg(timeout=10)["content"] == {"status": "ok", "comms": {}}
        assert time.monotonic() - started < 5
