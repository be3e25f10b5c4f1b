"""The edge's event framing (``edge.transport.sse.EventFrames``), as a table: whole, well-formed events
pass untouched; broken ones are dropped and counted; a partial one waits for its end."""

from __future__ import annotations

import pytest

from edge.transport.sse import EventFrames

OK = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
DONE = b"data: [DONE]\n\n"
BROKEN = b'data: {"choices": [\n\n'


@pytest.mark.parametrize(
    ("chunks", "out", "dropped"),
    [
        ([OK, OK, DONE], [OK, OK, DONE], 0),  # the common case: one whole event a chunk, passed as is
        ([OK + BROKEN + OK], [OK + OK], 1),  # a broken event in the middle of a chunk
        ([OK[:10], OK[10:] + DONE], [b"", OK + DONE], 0),  # a partial event waits for the rest
        (
            [b": keep-alive\n\n", b"event: x\ndata: {}\n\n"],
            [b": keep-alive\n\n", b"event: x\ndata: {}\n\n"],
            0,
        ),
        ([b"data:{}\n\n"], [b"data:{}\n\n"], 0),  # no space after the colon (TGI's own events)
        ([b"data: {}\r\n\r\n"], [b"data: {}\r\n\r\n"], 0),  # CRLF framing: passed through as it comes
    ],
)
def test_event_frames(chunks: list[bytes], out: list[bytes], dropped: int) -> None:
    frames = EventFrames()
    assert [frames.feed(c) for c in chunks] == out
    frames.end()
    assert frames.dropped == dropped


def test_a_partial_event_at_the_end_is_dropped_and_counted() -> None:
    frames = EventFrames()
    assert frames.feed(OK + OK[:20]) == OK
    frames.end()
    assert frames.dropped == 1


@pytest.mark.parametrize(
    ("events", "finished"),
    [
        ([b'data: {"choices": [{"delta": {"content": "a"}, "finish_reason": null}]}\n\n'], False),
        ([b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\n'], True),
        (
            [
                b'data: {"choices": [{"delta": {}, "finish_reason":"length"}]}\n\n',
                b'data: {"choices": [], "usage": {"prompt_tokens": 1}}\n\n',
            ],
            True,
        ),
        (
            [b'data: {"choices": [{"delta": {"content": "a"}, "finish_reason": null}]}\n\ndata: [DONE]\n\n'],
            True,
        ),
        ([b"data: [DONE]\n\n"], True),
    ],
    ids=["cut short", "finish reason", "finish then usage", "done in one chunk", "done"],
)
def test_a_stream_says_whether_its_answer_was_whole(events: list[bytes], finished: bool) -> None:
    frames = EventFrames()
    for e in events:
        frames.feed(e)
    assert frames.finished() is finished
