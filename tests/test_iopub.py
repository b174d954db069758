"""IOPub messages ↔ console records, both directions (protocol.md §1.5, §2.2, §3). Data-driven."""

from __future__ import annotations

import copy

import pytest

from remote_kernel import protocol as p
from remote_kernel.iopub import (
    _BASE,
    _FROM_RECORD,
    _JUPYTER,
    _SILENT_IOPUB,
    iopub_from_record,
    is_output_message,
    records_from_iopub,
)

# A 1x1 PNG, base64 as in a Jupyter bundle.
PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42"
    "mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
TRACEBACK = [
    "\x1b[31m---------------------------------------------------------------------------\x1b[39m",
    "\x1b[31mNameError\x1b[39m                                 Traceback (most recent call last)",
    "\x1b[36mCell\x1b[39m\x1b[36m \x1b[39m\x1b[32mIn[1]\x1b[39m\x1b[32m, line 1\x1b[39m\n"
    "\x1b[32m----> \x1b[39m\x1b[32m1\x1b[39m x\n",
    "\x1b[31mNameError\x1b[39m: name 'x' is not defined",
]
ERROR = {"ename": "NameError", "evalue": "name 'x' is not defined", "traceback": TRACEBACK}

# (msg_type, content, jupyter records, base records)
CASES = [
    (
        "stream",
        {"name": "stdout", "text": "hello world\n"},
        [["stdout", "hello world\n"]],
        [["stdout", "hello world\n"]],
    ),
    (
        "stream",
        {"name": "stderr", "text": "warn\r\n"},
        [["stderr", "warn\r\n"]],
        [["stderr", "warn\r\n"]],
    ),
    (
        "error",
        ERROR,
        [["error", ERROR]],
        [["stderr", "\n".join(TRACEBACK) + "\n"]],
    ),
    (
        "execute_result",
        {"data": {"text/plain": "2"}, "metadata": {}, "execution_count": 4},
        [["execute_result", {"data": {"text/plain": "2"}, "metadata": {}, "execution_count": 4}]],
        [["stdout", "2"]],
    ),
    (
        "execute_result",
        {
            "data": {"text/plain": "   a\n0  1", "text/html": "<table></table>"},
            "metadata": {"isolated": True},
            "execution_count": 7,
        },
        [
            [
                "execute_result",
                {
                    "data": {"text/plain": "   a\n0  1", "text/html": "<table></table>"},
                    "metadata": {"isolated": True},
                    "execution_count": 7,
                },
            ]
        ],
        [["media", ["text/html", "<table></table>"]]],
    ),
    (
        "display_data",
        {
            "data": {"text/plain": "<Figure size 640x480 with 1 Axes>", "image/png": PNG_B64},
            "metadata": {"image/png": {"width": 10, "height": 10}},
            "transient": {},
        },
        [
            [
                "display_data",
                {
                    "data": {
                        "text/plain": "<Figure size 640x480 with 1 Axes>",
                        "image/png": PNG_B64,
                    },
                    "metadata": {"image/png": {"width": 10, "height": 10}},
                    "transient": {},
                },
            ]
        ],
        [["media", ["image/png", f"data:image/png;base64,{PNG_B64}"]]],
    ),
    (
        "display_data",
        {"data": {"image/svg+xml": "<svg/>"}, "metadata": {}, "transient": {"display_id": "d1"}},
        [
            [
                "display_data",
                {
                    "data": {"image/svg+xml": "<svg/>"},
                    "metadata": {},
                    "transient": {"display_id": "d1"},
                },
            ]
        ],
        [["media", ["image/svg+xml", "<svg/>"]]],
    ),
    (
        "display_data",
        {"data": {"text/plain": "only text"}, "metadata": {}},
        [["display_data", {"data": {"text/plain": "only text"}, "metadata": {}, "transient": {}}]],
        [["stdout", "only text"]],
    ),
    (
        "display_data",
        {"data": {"application/json": {"a": 1}}, "metadata": {}, "transient": {}},
        [
            [
                "display_data",
                {"data": {"application/json": {"a": 1}}, "metadata": {}, "transient": {}},
            ]
        ],
        [["media", ["application/json", '{"a": 1}']]],
    ),
    (
        "display_data",
        {"data": {}, "metadata": {}, "transient": {}},
        [["display_data", {"data": {}, "metadata": {}, "transient": {}}]],
        [],
    ),
    (
        "update_display_data",
        {"data": {"text/plain": "50%"}, "metadata": {}, "transient": {"display_id": "bar"}},
        [
            [
                "update_display_data",
                {
                    "data": {"text/plain": "50%"},
                    "metadata": {},
                    "transient": {"display_id": "bar"},
                },
            ]
        ],
        [],
    ),
    ("clear_output", {"wait": True}, [["clear_output", {"wait": True}]], []),
    ("clear_output", {"wait": False}, [["clear_output", {"wait": False}]], []),
    ("clear_output", {}, [["clear_output", {"wait": False}]], []),
    ("status", {"execution_state": "busy"}, [], []),
    ("execute_input", {"code": "1+1", "execution_count": 1}, [], []),
    ("comm_open", {"comm_id": "c", "target_name": "t", "data": {}}, [], []),
    ("comm_msg", {"comm_id": "c", "data": {}}, [], []),
    ("something_new", {"x": 1}, [], []),
]


@pytest.mark.parametrize(
    ("msg_type", "content", "jupyter_records", "base_records"),
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_records_from_iopub(msg_type, content, jupyter_records, base_records):
    before = copy.deepcopy(content)
    assert records_from_iopub(msg_type, content, jupyter=True) == jupyter_records
    assert records_from_iopub(msg_type, content, jupyter=False) == base_records
    assert content == before


def test_jupyter_records_do_not_share_the_message_dicts():
    content = {"data": {"text/plain": "x"}, "metadata": {}, "transient": {"display_id": "d"}}
    [[_, body]] = records_from_iopub("display_data", content, jupyter=True)
    body["data"]["text/plain"] = "changed"
    body["transient"]["display_id"] = "changed"
    assert content == {
        "data": {"text/plain": "x"},
        "metadata": {},
        "transient": {"display_id": "d"},
    }


@pytest.mark.parametrize(
    ("msg_type", "known"),
    [
        ("stream", True),
        ("error", True),
        ("execute_result", True),
        ("display_data", True),
        ("update_display_data", True),
        ("clear_output", True),
        ("status", True),
        ("execute_input", True),
        ("comm_open", True),
        ("comm_msg", True),
        ("comm_close", True),
        ("debug_event", True),
        ("iopub_welcome", True),
        ("shutdown_reply", True),
        ("input_request", False),
        ("something_new", False),
    ],
)
def test_is_output_message(msg_type, known):
    assert is_output_message(msg_type) is known


# -- record → IOPub (the proxy side) --------------------------------------------------------------
@pytest.mark.parametrize(
    ("record", "message"),
    [
        (["stdout", "hello world\n"], ("stream", {"name": "stdout", "text": "hello world\n"})),
        (["stderr", "oops\n"], ("stream", {"name": "stderr", "text": "oops\n"})),
        (
            ["media", ["image/png", f"data:image/png;base64,{PNG_B64}"]],
            ("display_data", {"data": {"image/png": PNG_B64}, "metadata": {}, "transient": {}}),
        ),
        (
            ["media", ["image/jpeg", "data:image/jpeg;base64,/9j/4AAQ"]],
            ("display_data", {"data": {"image/jpeg": "/9j/4AAQ"}, "metadata": {}, "transient": {}}),
        ),
        (
            ["media", ["image/png", PNG_B64]],
            ("display_data", {"data": {"image/png": PNG_B64}, "metadata": {}, "transient": {}}),
        ),
        (
            ["media", ["image/svg+xml", "<svg></svg>"]],
            (
                "display_data",
                {"data": {"image/svg+xml": "<svg></svg>"}, "metadata": {}, "transient": {}},
            ),
        ),
        (
            ["media", ["text/html", "<table></table>"]],
            (
                "display_data",
                {"data": {"text/html": "<table></table>"}, "metadata": {}, "transient": {}},
            ),
        ),
        (
            ["media", ["application/json", '{"a": [1, 2]}']],
            (
                "display_data",
                {"data": {"application/json": {"a": [1, 2]}}, "metadata": {}, "transient": {}},
            ),
        ),
        (
            ["media", ["application/vnd.vega.v5+json", "not json"]],
            (
                "display_data",
                {
                    "data": {"application/vnd.vega.v5+json": "not json"},
                    "metadata": {},
                    "transient": {},
                },
            ),
        ),
        (
            ["media", ["application/json", {"already": "decoded"}]],
            (
                "display_data",
                {
                    "data": {"application/json": {"already": "decoded"}},
                    "metadata": {},
                    "transient": {},
                },
            ),
        ),
        (
            ["media", ("image/png", f"data:image/png;base64,{PNG_B64}")],
            ("display_data", {"data": {"image/png": PNG_B64}, "metadata": {}, "transient": {}}),
        ),
        (
            ["html", "<b>bold</b>"],
            (
                "display_data",
                {"data": {"text/html": "<b>bold</b>"}, "metadata": {}, "transient": {}},
            ),
        ),
        (
            ["execute_result", {"data": {"text/plain": "2"}, "metadata": {}, "execution_count": 3}],
            ("execute_result", {"data": {"text/plain": "2"}, "metadata": {}, "execution_count": 3}),
        ),
        (
            ["execute_result", {"data": {"text/plain": "2"}}],
            (
                "execute_result",
                {"data": {"text/plain": "2"}, "metadata": {}, "execution_count": None},
            ),
        ),
        (
            [
                "display_data",
                {
                    "data": {"image/png": PNG_B64},
                    "metadata": {"a": 1},
                    "transient": {"display_id": "d"},
                },
            ],
            (
                "display_data",
                {
                    "data": {"image/png": PNG_B64},
                    "metadata": {"a": 1},
                    "transient": {"display_id": "d"},
                },
            ),
        ),
        (
            ["display_data", {"data": {"text/plain": "x"}}],
            ("display_data", {"data": {"text/plain": "x"}, "metadata": {}, "transient": {}}),
        ),
        (
            [
                "update_display_data",
                {"data": {"text/plain": "9"}, "metadata": {}, "transient": {"display_id": "d"}},
            ],
            (
                "update_display_data",
                {"data": {"text/plain": "9"}, "metadata": {}, "transient": {"display_id": "d"}},
            ),
        ),
        (["clear_output", {"wait": True}], ("clear_output", {"wait": True})),
        (["clear_output", {}], ("clear_output", {"wait": False})),
        (["error", ERROR], ("error", ERROR)),
        (
            ["error", {"ename": "E"}],
            ("error", {"ename": "E", "evalue": "", "traceback": []}),
        ),
        (["media", ["image/png"]], None),
        (["media", "data:image/png;base64,AA=="], None),
        (["media", None], None),
        (["execute_result", "2"], None),
        (["error", "Traceback..."], None),
        (["log", ["INFO", "2025-01-01T00:00:00", "runner", "hi"]], None),
        (["completion", {"suggestions": []}], None),
        (["something_new", {"x": 1}], None),
    ],
)
def test_iopub_from_record(record, message):
    assert iopub_from_record(record) == message


# -- round trip: IOPub → record (server, jupyter console) → IOPub (proxy) -------------------------
ROUND_TRIP = [
    ("stream", {"name": "stdout", "text": "hello world\n"}),
    ("stream", {"name": "stderr", "text": "\x1b[31mred\x1b[0m\r\n"}),
    ("error", ERROR),
    ("execute_result", {"data": {"text/plain": "2"}, "metadata": {}, "execution_count": 1}),
    (
        "execute_result",
        {
            "data": {"text/plain": "df", "text/html": "<table/>", "text/markdown": "| a |"},
            "metadata": {"text/html": {"isolated": True}},
            "execution_count": 12,
        },
    ),
    (
        "display_data",
        {
            "data": {"text/plain": "<Figure>", "image/png": PNG_B64},
            "metadata": {"image/png": {"width": 640, "height": 480}},
            "transient": {},
        },
    ),
    (
        "display_data",
        {
            "data": {"application/json": {"a": [1, 2, {"b": None}]}, "text/plain": "{...}"},
            "metadata": {"application/json": {"expanded": False}},
            "transient": {"display_id": "j1"},
        },
    ),
    (
        "display_data",
        {
            "data": {
                "application/vnd.jupyter.widget-view+json": {"model_id": "m", "version_major": 2}
            },
            "metadata": {},
            "transient": {},
        },
    ),
    (
        "update_display_data",
        {"data": {"text/plain": "75%"}, "metadata": {}, "transient": {"display_id": "progress"}},
    ),
    ("clear_output", {"wait": True}),
    ("clear_output", {"wait": False}),
]


@pytest.mark.parametrize(
    ("msg_type", "content"), ROUND_TRIP, ids=[f"{m}-{i}" for i, (m, _) in enumerate(ROUND_TRIP)]
)
def test_round_trip_through_jupyter_console(msg_type, content):
    records = records_from_iopub(msg_type, content, jupyter=True)
    assert len(records) == 1
    assert iopub_from_record(records[0]) == (msg_type, content)


@pytest.mark.parametrize(
    ("msg_type", "content", "expected"),
    [
        (
            "display_data",
            {
                "data": {"text/plain": "<Figure>", "image/png": PNG_B64},
                "metadata": {"x": 1},
                "transient": {"display_id": "d"},
            },
            ("display_data", {"data": {"image/png": PNG_B64}, "metadata": {}, "transient": {}}),
        ),
        (
            "execute_result",
            {
                "data": {"text/plain": "'<b>'", "text/html": "<b>"},
                "metadata": {},
                "execution_count": 2,
            },
            ("display_data", {"data": {"text/html": "<b>"}, "metadata": {}, "transient": {}}),
        ),
        (
            "execute_result",
            {"data": {"text/plain": "2"}, "metadata": {}, "execution_count": 2},
            ("stream", {"name": "stdout", "text": "2"}),
        ),
        (
            "display_data",
            {"data": {"image/svg+xml": "<svg/>"}, "metadata": {}, "transient": {}},
            (
                "display_data",
                {"data": {"image/svg+xml": "<svg/>"}, "metadata": {}, "transient": {}},
            ),
        ),
        (
            "error",
            ERROR,
            ("stream", {"name": "stderr", "text": "\n".join(TRACEBACK) + "\n"}),
        ),
    ],
)
def test_round_trip_through_the_base_layer_is_lossy_as_documented(msg_type, content, expected):
    [record] = records_from_iopub(msg_type, content, jupyter=False)
    assert iopub_from_record(record) == expected


def test_widget_views_give_way_to_their_text() -> None:
    from remote_kernel.iopub import WIDGET_TEXT, WIDGET_VIEW_MIME, without_widget_views

    view = {"model_id": "abc", "version_major": 2, "version_minor": 0}
    content = {"data": {WIDGET_VIEW_MIME: view, "text/plain": "IntSlider(value=3)"},
               "metadata": {}, "transient": {}}  # fmt: skip
    assert without_widget_views(content) == (
        {"data": {"text/plain": "IntSlider(value=3)"}, "metadata": {}, "transient": {}},
        True,
    )
    alone = {"data": {WIDGET_VIEW_MIME: view}, "metadata": {}}
    assert without_widget_views(alone) == ({"data": {"text/plain": WIDGET_TEXT}, "metadata": {}},
                                           True)  # fmt: skip
    plain = {"data": {"text/plain": "1"}, "metadata": {}}
    assert without_widget_views(plain) == (plain, False)


# -- the dispatch tables themselves ---------------------------------------------------------------
#: One IOPub message per output type, as a remote kernel sends it.
OUTPUT_SAMPLES = {
    "stream": {"name": "stdout", "text": "hi\n"},
    "execute_result": {"data": {"text/plain": "2"}, "metadata": {}, "execution_count": 5},
    "display_data": {
        "data": {"image/png": PNG_B64, "text/plain": "<Figure>"},
        "metadata": {"image/png": {"width": 1}},
        "transient": {"display_id": "d"},
    },
    "update_display_data": {
        "data": {"text/plain": "90%"},
        "metadata": {},
        "transient": {"display_id": "d"},
    },
    "clear_output": {"wait": True},
    "error": ERROR,
}


def test_both_server_tables_know_the_same_output_types():
    assert _JUPYTER.keys() == _BASE.keys() == OUTPUT_SAMPLES.keys()


def test_is_output_message_is_the_tables_and_the_silent_set():
    for msg_type in [*_JUPYTER, *_BASE, *_SILENT_IOPUB]:
        assert is_output_message(msg_type)
    assert _JUPYTER.keys().isdisjoint(_SILENT_IOPUB)


def test_the_record_table_is_every_showable_record_type():
    assert _FROM_RECORD.keys() == {p.STDOUT, p.STDERR, p.MEDIA, p.HTML} | p.JUPYTER_RECORD_TYPES


def test_every_record_the_server_makes_has_an_entry():
    for msg_type, content in OUTPUT_SAMPLES.items():
        for jupyter in (True, False):
            for record in records_from_iopub(msg_type, content, jupyter=jupyter):
                assert record[0] in _FROM_RECORD
                assert iopub_from_record(record) is not None


@pytest.mark.parametrize("msg_type", sorted(OUTPUT_SAMPLES))
def test_each_output_type_round_trips_through_the_tables(msg_type):
    content = OUTPUT_SAMPLES[msg_type]
    records = records_from_iopub(msg_type, content, jupyter=True)
    assert [iopub_from_record(record) for record in records] == [(msg_type, content)]


def test_comm_messages_become_records_only_with_comms() -> None:
    from remote_kernel.iopub import CommMessage, comm_from_record, records_from_message

    msg = {
        "header": {"msg_type": "comm_open"},
        "content": {"comm_id": "c", "target_name": "jupyter.widget", "data": {"state": {}}},
        "metadata": {"version": "2.1.0"},
        "buffers": [memoryview(b"\x00\x01")],
    }
    rec = records_from_message(msg, jupyter=True, comms=True)
    assert rec == [["comm_open", {"content": msg["content"], "metadata": {"version": "2.1.0"},
                                  "buffers": ["AAE="]}]]  # fmt: skip
    assert records_from_message(msg, jupyter=True, comms=False) == []
    assert records_from_message(msg, jupyter=False, comms=True) == []
    assert comm_from_record(rec[0]) == CommMessage(
        "comm_open", msg["content"], {"version": "2.1.0"}, [b"\x00\x01"]
    )
    assert comm_from_record(["comm_msg", {"content": {}, "buffers": ["!!"]}]) is None
    assert comm_from_record(["comm_msg", {"content": "x"}]) is None
    assert comm_from_record(["stdout", "x"]) is None
