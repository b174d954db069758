"""``RunState``, the run loop's pure state machine: no sockets, no loop, no clock.

Each test plays a sequence of results (as either transport would deliver them) and checks what
the state asks to send and what it hands out.
"""

from __future__ import annotations

from typing import Any

import pytest

from remote_kernel import frames
from remote_kernel import protocol as p
from remote_kernel.protocol import RunResult
from remote_kernel.runloop import Call, RunState


def result(status: str, console: list[Any], cursor: int | None = None, **kw: Any) -> RunResult:
    return RunResult("r", status, console, cursor=cursor, **kw)


def out(text: str) -> list[Any]:
    return [p.STDOUT, text]


def test_query_then_continue_from_the_cursor() -> None:
    state = RunState("print(1)", {"console": "jupyter"}, run_id="r")
    assert state.next_call() == Call("query", "print(1)", {"console": "jupyter"}, 0, True)
    update = state.accept(result(p.CONTINUED, [out("a"), out("b")], 2), 0)
    assert update.records == [out("a"), out("b")] and not update.terminal
    assert state.next_call() == Call("continue", "", {}, 2, True)


def test_a_lost_response_means_the_same_request_again() -> None:
    state = RunState("x", run_id="r")
    first = state.next_call()
    assert state.next_call() == first  # nothing accepted: the query is sent again, same runId
    state.accept(result(p.CONTINUED, [out("a")], 1), 0)
    again = state.next_call()
    assert state.next_call() == again == Call("continue", "", {}, 1, True)


def test_a_replayed_response_hands_out_only_what_is_new() -> None:
    state = RunState("x", run_id="r")
    state.accept(result(p.CONTINUED, [out("a"), out("b")], 2), 0)
    update = state.accept(result(p.CONTINUED, [out("a"), out("b"), out("c")], 3), 0)
    assert update.records == [out("c")]
    assert state.cursor == 3
    update = state.accept(result(p.CONTINUED, [out("b"), out("c")], 3), 1)
    assert update.records == [] and state.cursor == 3


def test_a_gap_is_reported_and_changes_nothing() -> None:
    state = RunState("x", run_id="r")
    state.accept(result(p.CONTINUED, [out("a")], 1), 0)
    update = state.accept(result(p.CONTINUED, [out("z")], 6), 5)
    assert update.gap and update.records == [] and state.cursor == 1


def test_prompts_are_answered_once_even_when_reported_again() -> None:
    state = RunState("input()", run_id="r")
    waiting = {"is_password": False, "prompt": "? ", "input_seq": 1}
    update = state.accept(result(p.WAITING_INPUT, [], 0, options=waiting), 0)
    assert update.new_prompt
    state.answer("yes")
    assert state.next_call() == Call("input", "yes", {"input_seq": 1}, 0, True)
    assert state.input_frame() == frames.input_("r", 1, "yes")
    # a resumed channel reports the same prompt again: not a new one, the answer stays pending
    again = state.accept(result(p.WAITING_INPUT, [], 0, options=waiting), 0)
    assert not again.new_prompt and state.pending == "yes"
    state.input_accepted(1)
    assert state.pending is None and state.input_frame() is None
    second = {**waiting, "input_seq": 2}
    assert state.accept(result(p.WAITING_INPUT, [out("1\n")], 1, options=second), 0).new_prompt
    state.answer("no")
    assert state.next_call().options == {"input_seq": 2}
    done = state.accept(result(p.FINISHED, [], 1, exit_code=0), 1)
    assert done.terminal and state.pending is None and state.done


def test_a_result_past_the_prompt_proves_the_answer_arrived() -> None:
    state = RunState("input()", run_id="r")
    waiting = {"is_password": False, "prompt": "", "input_seq": 1}
    state.accept(result(p.WAITING_INPUT, [], 0, options=waiting), 0)
    state.answer("a")
    state.accept(result(p.CONTINUED, [], 0), 0)
    assert state.pending is None and state.next_call().mode == "continue"


def test_base_layer_without_cursor_or_prompt_numbers() -> None:
    state = RunState("input()", cursors=False, idempotent=False, run_id="r")
    assert state.next_call() == Call("query", "input()", {}, None, False)
    update = state.accept(result(p.WAITING_INPUT, [out("name: ")], options={"is_password": False}),
                          None)  # fmt: skip
    assert update.new_prompt and update.records == [out("name: ")]
    state.answer("ann")
    assert state.next_call() == Call("input", "ann", {}, None, False)
    update = state.accept(result(p.WAITING_INPUT, [out("age: ")], options={}), None)
    assert update.new_prompt and state.pending is None  # the input call's response: delivered
    state.answer("3")
    update = state.accept(result(p.FINISHED, [out("ok\n")], exit_code=0), None)
    assert update.terminal and update.records == [out("ok\n")]


@pytest.mark.parametrize(("cursors", "idempotent"), [(True, True), (True, False), (False, False)])
def test_what_may_be_sent_again(cursors: bool, idempotent: bool) -> None:
    state = RunState("x", cursors=cursors, idempotent=idempotent, run_id="r")
    assert state.next_call().idempotent is idempotent
    state.accept(result(p.CONTINUED, [], 0 if cursors else None), 0 if cursors else None)
    assert state.next_call().idempotent is cursors


def test_channel_frames_resume_from_the_cursor() -> None:
    state = RunState("x", {"console": "jupyter"}, run_id="r")
    assert state.run_frame() == frames.run("r", "x", {"console": "jupyter"}, 0)
    state.accept(result(p.CONTINUED, [out("a")], 1), 0)
    assert state.run_frame()["cursor"] == 1
    assert state.ack_frame() == frames.ack("r", 1)


def test_interrupt_ids_are_new_each_time() -> None:
    state = RunState("x")
    first, second = state.new_interrupt(), state.new_interrupt()
    assert first != second and state.interrupt_ids == [first, second]
