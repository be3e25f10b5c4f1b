"""Stitching a continued stream (``edge.transport.continuation``), pure: what the client had, the request
that goes on from it, and the continuation's events rewritten as the original stream's."""

from __future__ import annotations

import json

import pytest

from edge.transport.continuation import Continuable, Stitch, continuation_body, partial_of


def event(stream_id: str, content: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, object] = {"id": stream_id, "choices": [] if usage else [{"delta": {"content": content}}]}
    if usage:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def test_what_the_client_had() -> None:
    sent = [event("a", "Once "), event("a", "upon ") + event("a", "a "), b": comment\n\n"]
    assert partial_of(sent) == ("Once upon a ", 3, "a")


def test_the_request_that_goes_on() -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "tell"}], "max_tokens": 60})
    went_on = json.loads(continuation_body(body.encode(), "Once upon", 40) or b"{}")
    assert went_on["messages"][-1] == {"role": "assistant", "content": "Once upon"}
    assert went_on["continue_final_message"] is True and went_on["add_generation_prompt"] is False
    assert went_on["max_tokens"] == 20
    assert continuation_body(b'{"prompt": "x"}', "a", 1) is None  # not a chat request
    assert continuation_body(body.encode(), "", 0) is None  # nothing to go on from


def test_the_continuations_events_become_the_original_streams() -> None:
    stitch = Stitch("orig", sent=40)
    assert stitch.rewrite(event("new", "time ")) == event("orig", "time ")
    usage = json.loads(stitch.rewrite(event("new", usage={"prompt_tokens": 52, "completion_tokens": 20}))[6:])
    assert usage["id"] == "orig"
    assert usage["usage"] == {"prompt_tokens": 12, "completion_tokens": 60, "total_tokens": 72}


@pytest.mark.parametrize(
    ("models", "replica", "model", "goes_on"),
    [
        (None, ("r", "vllm-1"), "m", True),  # the engine decides
        (None, ("r", "plain-1"), "m", False),
        ({"m": False}, ("r", "vllm-1"), "m", False),  # continuation: none wins over the engine
        ({"m": True}, ("r", "plain-1"), "m", True),  # continuation: prefill wins over the engine
        ({"m": False}, ("r", "vllm-1"), "other", True),  # another model: the engine again
        ({"m": False}, ("r", "vllm-1"), None, True),
    ],
)
def test_where_a_stream_may_go_on(
    models: dict[str, bool] | None, replica: tuple[str, str], model: str | None, goes_on: bool
) -> None:
    assert Continuable(frozenset({("r", "vllm-1")}), models).at(*replica, model) is goes_on
