"""The pure run-loop contract (protocol.md §1.5, §2): records, bundles, requests, results."""

from __future__ import annotations

import json

import pytest

from remote_kernel import protocol as p
from remote_kernel.errors import InvalidAPIParamsError, ProtocolError

# A 1x1 PNG, base64 as in a Jupyter bundle.
PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42"
    "mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

# Real ipykernel 7 / IPython 9 tracebacks, colour codes included.
NAME_ERROR_TB = [
    "\x1b[31m---------------------------------------------------------------------------\x1b[39m",
    "\x1b[31mNameError\x1b[39m                                 Traceback (most recent call last)",
    "\x1b[36mCell\x1b[39m\x1b[36m \x1b[39m\x1b[32mIn[1]\x1b[39m\x1b[32m, line 1\x1b[39m\n"
    "\x1b[32m----> \x1b[39m\x1b[32m1\x1b[39m x\n",
    "\x1b[31mNameError\x1b[39m: name 'x' is not defined",
]
KEYBOARD_INTERRUPT_TB = [
    "\x1b[31m---------------------------------------------------------------------------\x1b[39m",
    "\x1b[31mKeyboardInterrupt\x1b[39m                         Traceback (most recent call last)",
    "\x1b[36mCell\x1b[39m\x1b[36m \x1b[39m\x1b[32mIn[2]\x1b[39m\x1b[32m, line 1\x1b[39m\n"
    "\x1b[32m----> \x1b[39m\x1b[32m1\x1b[39m time.sleep(30)\n",
    "\x1b[31mKeyboardInterrupt\x1b[39m: ",
]


# -- merge_console --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("records", "merged"),
    [
        ([], []),
        ([["stdout", "a"]], [["stdout", "a"]]),
        ([["stdout", "a"], ["stdout", "b"], ["stdout", "c\n"]], [["stdout", "abc\n"]]),
        ([["stderr", "x"], ["stderr", "y"]], [["stderr", "xy"]]),
        (
            [["stdout", "a"], ["stderr", "b"], ["stdout", "c"], ["stdout", "d"]],
            [["stdout", "a"], ["stderr", "b"], ["stdout", "cd"]],
        ),
        (
            [
                ["stdout", "a"],
                ["media", ["image/png", "data:image/png;base64,AA=="]],
                ["stdout", "b"],
            ],
            [
                ["stdout", "a"],
                ["media", ["image/png", "data:image/png;base64,AA=="]],
                ["stdout", "b"],
            ],
        ),
        (
            [["html", "<b>1</b>"], ["html", "<b>2</b>"]],
            [["html", "<b>1</b>"], ["html", "<b>2</b>"]],
        ),
        (
            [["error", {"ename": "E"}], ["error", {"ename": "F"}]],
            [["error", {"ename": "E"}], ["error", {"ename": "F"}]],
        ),
    ],
)
def test_merge_console(records, merged):
    assert p.merge_console(records) == merged


def test_merge_console_returns_lists_and_leaves_its_input_alone():
    records = [("stdout", "a"), ("stdout", "b")]
    assert p.merge_console(records) == [["stdout", "ab"]]
    assert records == [("stdout", "a"), ("stdout", "b")]
    single = [["stdout", "a"]]
    out = p.merge_console(single)
    out[0][1] = "changed"
    assert single == [["stdout", "a"]]


# -- base_record_from_bundle ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bundle", "expected"),
    [
        ({"text/plain": "2"}, ["stdout", "2"]),
        ({"text/plain": ["line 1\n", "line 2"]}, ["stdout", "line 1\nline 2"]),
        ({"image/png": PNG_B64}, ["media", ["image/png", f"data:image/png;base64,{PNG_B64}"]]),
        (
            {"text/plain": "<Figure>", "image/png": PNG_B64 + "\n"},
            ["media", ["image/png", f"data:image/png;base64,{PNG_B64}"]],
        ),
        ({"image/jpeg": "/9j/4AAQ"}, ["media", ["image/jpeg", "data:image/jpeg;base64,/9j/4AAQ"]]),
        ({"image/svg+xml": "<svg></svg>"}, ["media", ["image/svg+xml", "<svg></svg>"]]),
        ({"image/svg+xml": ["<svg>", "</svg>"]}, ["media", ["image/svg+xml", "<svg></svg>"]]),
        (
            {"text/plain": "df", "text/html": "<table></table>"},
            ["media", ["text/html", "<table></table>"]],
        ),
        (
            {"text/plain": "x", "text/markdown": "# T", "text/html": "<h1>T</h1>"},
            ["media", ["text/markdown", "# T"]],
        ),
        (
            {"text/html": "<b>x</b>", "image/png": PNG_B64, "text/plain": "x"},
            ["media", ["text/html", "<b>x</b>"]],
        ),
        ({"application/json": {"a": [1, 2]}}, ["media", ["application/json", '{"a": [1, 2]}']]),
        (
            {"application/vnd.vega.v5+json": {"mark": "bar"}},
            ["media", ["application/vnd.vega.v5+json", '{"mark": "bar"}']],
        ),
        (
            {"application/pdf": "JVBERi0="},
            ["media", ["application/pdf", "data:application/pdf;base64,JVBERi0="]],
        ),
        ({}, None),
    ],
)
def test_base_record_from_bundle(bundle, expected):
    assert p.base_record_from_bundle(bundle) == expected


# -- data URIs ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"data:image/png;base64,{PNG_B64}", ("image/png", PNG_B64)),
        ("data:image/jpeg;base64,/9j/4AAQ", ("image/jpeg", "/9j/4AAQ")),
        ("data:text/plain;charset=utf-8;base64,aGk=", ("text/plain", "aGk=")),
        ("data:text/plain,hello%20world", ("text/plain", "aGVsbG8gd29ybGQ=")),
        ("data:image/png;base64,", ("image/png", "")),
        ("<svg></svg>", None),
        ("image/png", None),
        ("data:,x", None),
        ("", None),
    ],
)
def test_unwrap_data_uri(value, expected):
    assert p.unwrap_data_uri(value) == expected


def test_data_uri_round_trip():
    assert p.data_uri("image/png", PNG_B64) == f"data:image/png;base64,{PNG_B64}"
    assert p.unwrap_data_uri(p.data_uri("image/png", PNG_B64)) == ("image/png", PNG_B64)


@pytest.mark.parametrize(
    ("mime", "text", "json_"),
    [
        ("text/plain", True, False),
        ("text/html", True, False),
        ("image/svg+xml", True, False),
        ("application/xml", True, False),
        ("application/javascript", True, False),
        ("image/png", False, False),
        ("application/pdf", False, False),
        ("application/json", False, True),
        ("application/vnd.plotly.v1+json", False, True),
    ],
)
def test_mime_classes(mime, text, json_):
    assert p.is_text_mime(mime) is text
    assert p.is_json_mime(mime) is json_


# -- ename/evalue from a traceback ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\n".join(NAME_ERROR_TB) + "\n", ("NameError", "name 'x' is not defined")),
        ("\n".join(KEYBOARD_INTERRUPT_TB) + "\n", ("KeyboardInterrupt", "")),
        ("NameError: name 'x' is not defined", ("NameError", "name 'x' is not defined")),
        (
            'Traceback (most recent call last):\n  File "<stdin>", line 1\n'
            "ZeroDivisionError: division by zero\n\n",
            ("ZeroDivisionError", "division by zero"),
        ),
        ("KeyboardInterrupt", ("KeyboardInterrupt", "")),
        ("SystemExit: 3", ("SystemExit", "3")),
        ("StopIteration", ("StopIteration", "")),
        (
            "mypkg.errors.CustomError: it broke: badly",
            ("mypkg.errors.CustomError", "it broke: badly"),
        ),
        ("\x1b[0;31mValueError\x1b[0m: bad \x1b[1mvalue\x1b[0m", ("ValueError", "bad value")),
        ("hello world\n", None),
        ("NameError: x\nsome trailing text", None),
        ("", None),
        ("\n\n", None),
    ],
)
def test_ename_evalue_from_traceback(text, expected):
    assert p.ename_evalue_from_traceback(text) == expected


def test_strip_ansi():
    assert p.strip_ansi("\x1b[31mNameError\x1b[39m: x \x1b[38;5;28;01mraise\x1b[39;00m") == (
        "NameError: x raise"
    )


# -- parse_execute_request ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"mode": "query", "code": "print('hi')", "runId": None},
            p.ExecuteRequest(mode="query", code="print('hi')", run_id=None),
        ),
        (
            {"mode": "query", "code": "1", "runId": "r1", "run_id": "r1"},
            p.ExecuteRequest(mode="query", code="1", run_id="r1"),
        ),
        (
            {"mode": "continue", "code": "", "runId": "r-camel"},
            p.ExecuteRequest(mode="continue", code="", run_id="r-camel"),
        ),
        (
            {"mode": "continue", "code": "", "run_id": "r-snake"},
            p.ExecuteRequest(mode="continue", code="", run_id="r-snake"),
        ),
        (
            {"mode": "input", "code": "Ada", "runId": "camel", "run_id": "snake"},
            p.ExecuteRequest(mode="input", code="Ada", run_id="snake"),
        ),
        (
            {"mode": "query", "code": None, "options": None},
            p.ExecuteRequest(mode="query", code="", run_id=None),
        ),
        (
            {
                "mode": "batch",
                "code": "",
                "runId": None,
                "options": {
                    "clean": None,
                    "build": "*",
                    "buildLog": False,
                    "exec": "python main.py",
                },
            },
            p.ExecuteRequest(
                mode="batch",
                code="",
                run_id=None,
                options={"clean": None, "build": "*", "buildLog": False, "exec": "python main.py"},
            ),
        ),
        (
            {"code": "impo", "options": {"row": 0, "col": 4, "line": "impo", "post": ""}},
            p.ExecuteRequest(
                mode="complete",
                code="impo",
                run_id=None,
                options={"row": 0, "col": 4, "line": "impo", "post": ""},
            ),
        ),
        (
            {"mode": "continue", "runId": "r", "cursor": 3},
            p.ExecuteRequest(mode="continue", code="", run_id="r", cursor=3),
        ),
        (
            {"mode": "continue", "runId": "r", "options": {"cursor": 0}},
            p.ExecuteRequest(mode="continue", code="", run_id="r", options={"cursor": 0}, cursor=0),
        ),
        (
            {"mode": "continue", "runId": "r", "cursor": 5, "options": {"cursor": 2}},
            p.ExecuteRequest(mode="continue", code="", run_id="r", options={"cursor": 2}, cursor=5),
        ),
        (
            {"mode": "input", "code": "x", "runId": "r", "options": {"cursor": 7, "input_seq": 2}},
            p.ExecuteRequest(
                mode="input", code="x", run_id="r", options={"cursor": 7, "input_seq": 2}, cursor=7
            ),
        ),
    ],
)
def test_parse_execute_request(body, expected):
    assert p.parse_execute_request(body) == expected


@pytest.mark.parametrize(
    ("body", "msg"),
    [
        ([], "The request body must be a JSON object."),
        ("query", "The request body must be a JSON object."),
        (None, "The request body must be a JSON object."),
        ({"mode": "query", "options": ["a"]}, "'options' must be a JSON object."),
        ({"mode": "query", "options": 3}, "'options' must be a JSON object."),
        ({"mode": "query", "options": "x"}, "'options' must be a JSON object."),
        ({"code": "1"}, "'mode' must be one of query, continue, input, batch, complete; got None."),
        (
            {"mode": "run", "code": "1"},
            "'mode' must be one of query, continue, input, batch, complete; got 'run'.",
        ),
        (
            {"mode": "QUERY", "code": "1"},
            "'mode' must be one of query, continue, input, batch, complete; got 'QUERY'.",
        ),
        ({"mode": "query", "code": 1}, "'code' must be a string."),
        ({"mode": "query", "code": ["a"]}, "'code' must be a string."),
        ({"mode": "query", "code": "1", "runId": 5}, "'runId' must be a string."),
        ({"mode": "continue", "code": ""}, "'continue' requires the runId of the run to continue."),
        (
            {"mode": "continue", "code": "", "runId": None},
            "'continue' requires the runId of the run to continue.",
        ),
        (
            {"mode": "continue", "code": "", "runId": ""},
            "'continue' requires the runId of the run to continue.",
        ),
        ({"mode": "input", "code": "x"}, "'input' requires the runId of the run to continue."),
        (
            {"mode": "continue", "runId": "r", "cursor": -1},
            "'cursor' must be a non-negative integer.",
        ),
        (
            {"mode": "continue", "runId": "r", "options": {"cursor": -3}},
            "'cursor' must be a non-negative integer.",
        ),
        (
            {"mode": "continue", "runId": "r", "cursor": "2"},
            "'cursor' must be a non-negative integer.",
        ),
        (
            {"mode": "continue", "runId": "r", "cursor": 1.5},
            "'cursor' must be a non-negative integer.",
        ),
        (
            {"mode": "continue", "runId": "r", "cursor": True},
            "'cursor' must be a non-negative integer.",
        ),
    ],
)
def test_parse_execute_request_rejects(body, msg):
    with pytest.raises(InvalidAPIParamsError) as info:
        p.parse_execute_request(body)
    assert info.value.msg == msg
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("options", "jupyter", "input_seq"),
    [
        ({}, False, None),
        ({"console": "jupyter"}, True, None),
        ({"console": "base"}, False, None),
        ({"input_seq": 4}, False, 4),
        ({"input_seq": "4"}, False, None),
        ({"input_seq": True}, False, None),
    ],
)
def test_execute_request_properties(options, jupyter, input_seq):
    req = p.parse_execute_request({"mode": "query", "code": "", "options": options})
    assert req.jupyter_console is jupyter
    assert req.input_seq == input_seq


# -- results --------------------------------------------------------------------------------------
def test_run_result_base_layer_shape():
    assert p.run_result("r1", "finished", [["stdout", "hi\n"]], exit_code=0) == {
        "result": {
            "runId": "r1",
            "status": "finished",
            "exitCode": 0,
            "options": None,
            "files": [],
            "console": [["stdout", "hi\n"]],
        }
    }


def test_run_result_with_extensions():
    reply = {"status": "ok", "execution_count": 3, "user_expressions": {}, "payload": []}
    assert p.run_result(
        "r2",
        "waiting-input",
        [],
        options={"is_password": True, "prompt": "Password: "},
        cursor=4,
        reply=reply,
    ) == {
        "result": {
            "runId": "r2",
            "status": "waiting-input",
            "exitCode": None,
            "options": {"is_password": True, "prompt": "Password: "},
            "files": [],
            "console": [],
            "cursor": 4,
            "reply": reply,
        }
    }


@pytest.mark.parametrize(
    ("kwargs", "parsed"),
    [
        (
            {"run_id": "r", "status": "finished", "console": [["stdout", "a"]], "exit_code": 0},
            p.RunResult("r", "finished", [["stdout", "a"]], 0, {}, None, None),
        ),
        (
            {"run_id": "r", "status": "continued", "console": [], "cursor": 0},
            p.RunResult("r", "continued", [], None, {}, 0, None),
        ),
        (
            {
                "run_id": "r",
                "status": "waiting-input",
                "console": [["stdout", "Name: "]],
                "options": {"is_password": False},
            },
            p.RunResult(
                "r",
                "waiting-input",
                [["stdout", "Name: "]],
                None,
                {"is_password": False},
                None,
                None,
            ),
        ),
        (
            {
                "run_id": "r",
                "status": "finished",
                "exit_code": 1,
                "cursor": 2,
                "console": [
                    ["error", {"ename": "NameError", "evalue": "x", "traceback": []}],
                    ["media", ["image/png", "data:image/png;base64,AA=="]],
                ],
                "reply": {"status": "error", "ename": "NameError"},
            },
            p.RunResult(
                "r",
                "finished",
                [
                    ["error", {"ename": "NameError", "evalue": "x", "traceback": []}],
                    ["media", ["image/png", "data:image/png;base64,AA=="]],
                ],
                1,
                {},
                2,
                {"status": "error", "ename": "NameError"},
            ),
        ),
    ],
)
def test_run_result_round_trip(kwargs, parsed):
    body = p.run_result(kwargs.pop("run_id"), kwargs.pop("status"), kwargs.pop("console"), **kwargs)
    assert p.parse_run_result(json.loads(json.dumps(body))) == parsed


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        ("continued", False),
        ("waiting-input", False),
        ("clean-finished", False),
        ("build-finished", False),
        ("finished", True),
        ("exec-timeout", True),
        ("something-new", True),
    ],
)
def test_run_result_terminal(status, terminal):
    assert p.RunResult("r", status, []).terminal is terminal


def test_parse_run_result_real_manager_body():
    body = {
        "result": {
            "runId": "33a4cf37",
            "status": "finished",
            "exitCode": 0,
            "options": None,
            "files": [],
            "console": [["stdout", "hi\n"]],
        }
    }
    assert p.parse_run_result(body) == p.RunResult("33a4cf37", "finished", [["stdout", "hi\n"]], 0)


def test_parse_run_result_tolerates_missing_optional_fields():
    assert p.parse_run_result({"result": {"status": "continued", "run_id": "snake"}}) == (
        p.RunResult("snake", "continued", [], None, {}, None, None)
    )
    assert p.parse_run_result({"result": {"status": "finished", "console": None}}) == (
        p.RunResult("", "finished", [], None, {}, None, None)
    )
    assert p.parse_run_result(
        {"result": {"status": "finished", "console": [("stdout", "t")], "cursor": "3",
                    "reply": "ok"}}
    ) == p.RunResult("", "finished", [["stdout", "t"]], None, {}, None, None)  # fmt: skip


@pytest.mark.parametrize(
    ("body", "msg"),
    [
        (None, "Execute response has no result status: None"),
        ([], "Execute response has no result status: []"),
        ({}, "Execute response has no result status: {}"),
        ({"result": None}, "Execute response has no result status: {'result': None}"),
        ({"result": []}, "Execute response has no result status: {'result': []}"),
        (
            {"result": {"console": []}},
            "Execute response has no result status: {'result': {'console': []}}",
        ),
        (
            {"result": {"status": 1}},
            "Execute response has no result status: {'result': {'status': 1}}",
        ),
        (
            {"result": {"status": "finished", "console": "hi"}},
            "Execute response 'console' is not a list.",
        ),
        (
            {"result": {"status": "finished", "console": {"stdout": "hi"}}},
            "Execute response 'console' is not a list.",
        ),
        (
            {"result": {"status": "finished", "console": ["stdout"]}},
            "Malformed console record: stdout",
        ),
        (
            {"result": {"status": "finished", "console": [["stdout"]]}},
            "Malformed console record: ['stdout']",
        ),
        (
            {"result": {"status": "finished", "console": [["stdout", "a", "b"]]}},
            "Malformed console record: ['stdout', 'a', 'b']",
        ),
        (
            {"result": {"status": "finished", "console": [[1, "a"]]}},
            "Malformed console record: [1, 'a']",
        ),
    ],
)
def test_parse_run_result_rejects(body, msg):
    with pytest.raises(ProtocolError) as info:
        p.parse_run_result(body)
    assert str(info.value) == msg


# -- constants ------------------------------------------------------------------------------------
def test_api_version_and_features():
    assert p.API_VERSION == "v9.20250722"
    assert p.API_VERSION in p.VALID_VERSIONS
    assert p.FEATURES == (
        "jupyter-console",
        "output-cursor",
        "kernel-info",
        "inspect",
        "is-complete",
        "idempotent-runs",
        "push-channel",
        "comms",
        "leases",
    )
    assert p.MODES == ("query", "continue", "input", "batch", "complete")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("mysess-01", True),
        ("abcd", True),
        ("a" * 64, True),
        ("a.b_c-d", True),
        ("abc", False),
        ("a" * 65, False),
        ("-abcd", False),
        ("abcd-", False),
        ("ab cd", False),
        ("séance", False),
        ("abcd\n", False),  # `$` would have let a trailing newline through
    ],
)
def test_session_name_rule(name, ok):
    assert bool(p.SESSION_NAME_RE.match(name)) is ok
