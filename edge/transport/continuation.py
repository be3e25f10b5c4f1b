"""Streams that survive a cut (pure, no I/O): when a region breaks off a chat stream after some tokens, the
edge asks another replica to go on from where it stopped — the original request with the partial answer as
an assistant message and vLLM's ``continue_final_message`` (``add_generation_prompt: false``) — and stitches
its events into the client's stream: the original stream's id, the tokens already sent counted as
completion, one usage chunk."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

_ID = re.compile(rb'"id":\s*"([^"]+)"')
MOST_KEPT = 1 << 20  # a stream longer than this is not continued: its events are not kept


@dataclass(frozen=True, slots=True)
class Continuable:
    """Where a broken-off stream may go on: a model's own word in the catalog (``continuation:``) wins,
    else the replica's engine decides (vllm and sglang take ``continue_final_message``)."""

    engines: frozenset[tuple[str, str]] = frozenset()  # (region, replica) whose engine continues
    models: Mapping[str, bool] | None = None  # model -> the catalog's word, where it says one

    def at(self, region: str, replica: str, model: str | None) -> bool:
        said = self.models.get(model) if self.models is not None and model is not None else None
        return (region, replica) in self.engines if said is None else said


class Sent:
    """What the client has of a stream, kept in case the region breaks off (bounded: past ``MOST_KEPT``
    bytes nothing is kept and the stream cannot be continued)."""

    __slots__ = ("chunks", "full", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.full = False

    def add(self, chunk: bytes) -> None:
        if self.full:
            return
        self.size += len(chunk)
        if self.size > MOST_KEPT:
            self.full, self.chunks = True, []
        else:
            self.chunks.append(chunk)


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None


class _Event(msgspec.Struct):
    id: str | None = None
    choices: list[_Choice] = []


_EVENT = msgspec.json.Decoder(_Event)


def partial_of(sent: Sequence[bytes]) -> tuple[str, int, str | None]:
    """What the client got so far: the answer's text, its content events (≈ tokens) and the stream's id."""
    text: list[str] = []
    events, stream_id = 0, None
    for chunk in sent:
        for line in chunk.split(b"\n"):
            if not line.startswith(b"data: {"):
                continue
            try:
                event = _EVENT.decode(line[6:])
            except msgspec.DecodeError:
                continue
            stream_id = stream_id or event.id
            for choice in event.choices:
                if choice.delta is not None and choice.delta.content:
                    text.append(choice.delta.content)
                    events += 1
    return "".join(text), events, stream_id


def continuation_body(body: bytes, partial: str, sent: int) -> bytes | None:
    """The original chat request asking to go on from ``partial`` (None: not a chat request we can extend)."""
    try:
        request: Any = json.loads(body)
    except ValueError:
        return None
    messages = request.get("messages") if isinstance(request, dict) else None
    if not isinstance(messages, list) or not partial:
        return None
    request["messages"] = [*messages, {"role": "assistant", "content": partial}]
    request["continue_final_message"] = True
    request["add_generation_prompt"] = False
    for cap in ("max_tokens", "max_completion_tokens"):
        if isinstance(request.get(cap), int):
            request[cap] = max(1, request[cap] - sent)
    return json.dumps(request).encode()


class Stitch:
    """The continuation's events as the original stream's: its id replaced by the original's, and its
    usage counting the tokens the client already had as completion, not prompt."""

    __slots__ = ("new_id", "original_id", "sent")

    def __init__(self, original_id: str, sent: int) -> None:
        self.original_id, self.sent = original_id.encode(), sent
        self.new_id: bytes | None = None

    def rewrite(self, chunk: bytes) -> bytes:
        if not chunk:
            return chunk
        if self.new_id is None and (m := _ID.search(chunk)) is not None:
            self.new_id = m.group(1)
        if self.new_id is not None and self.new_id != self.original_id:
            chunk = chunk.replace(b'"' + self.new_id + b'"', b'"' + self.original_id + b'"')
        if b'"prompt_tokens"' in chunk:
            chunk = b"\n".join(self._usage(line) for line in chunk.split(b"\n"))
        return chunk

    def _usage(self, line: bytes) -> bytes:
        if not line.startswith(b"data: {") or b'"prompt_tokens"' not in line:
            return line
        event = json.loads(line[6:])
        usage = event.get("usage")
        if isinstance(usage, dict):
            prompt = max(0, int(usage.get("prompt_tokens", 0)) - self.sent)
            completion = int(usage.get("completion_tokens", 0)) + self.sent
            usage.update(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        return b"data: " + json.dumps(event).encode()
