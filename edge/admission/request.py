"""What an inference request asks for (pure, no I/O): its model, and its affinity key — the OpenAI
``prompt_cache_key`` when present, else the ``X-Session-Id`` header, else a hash of the prompt's leading
turns (the messages up to and including the first user turn, each cut to ``PREFIX_CHARS``; a completion's
prompt cut the same way). Every turn of one conversation shares those leading turns, so every edge derives
the same key for all of them without sharing any state.

The body is decoded with msgspec into only the fields routing reads (the rest is skipped, not built)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

MOST_TOKENS = 2**31 - 1  # no model's context comes near: above it, max_tokens is an error, not a reservation
PREFIX_CHARS = 2048  # of each leading message: long enough to tell sessions apart, bounded in cost
KeySource = Literal["prompt_cache_key", "session", "prefix"]


class _Message(msgspec.Struct):
    role: str = ""
    content: str | list[dict[str, object]] | None = None


# a model's name: printable ASCII without spaces, at most 256 characters (it is stored in usage keys and
# shown in tables; the catalog's names, and the open world's, are far shorter)
ModelName = Annotated[str, msgspec.Meta(pattern=r"^[!-~]{1,256}$")]


class _Body(msgspec.Struct):
    model: ModelName | None = None
    prompt_cache_key: str | None = None
    messages: list[_Message] | None = None
    prompt: str | list[object] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


_DECODER = msgspec.json.Decoder(_Body)


class BodyError(ValueError):
    """The body is not the JSON object an inference route takes (the message names the field)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)  # not frozen: made per request (a frozen dataclass's init costs 3x)
class Inference:
    model: str | None
    key: int | None  # the affinity key, 64 bits (None: nothing to be sticky on)
    key_source: KeySource | None
    max_tokens: int | None = None  # what it may generate: the larger of max_tokens, max_completion_tokens


def read(body: bytes, session: str | None) -> Inference:
    """The routing facts of an inference body; ``BodyError`` when it is not a JSON object of that shape."""
    if not body:
        return Inference(None, _hash("session", session) if session else None, "session" if session else None)
    try:
        parsed = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        field = str(exc).rpartition("$.")[2].split("[")[0].rstrip("`") if "$." in str(exc) else None
        if field == "model" and "regex" in str(exc):
            raise BodyError(
                "invalid request body: model must be 1 to 256 printable ASCII characters, no spaces",
                param="model",
            ) from None
        raise BodyError(f"invalid request body: {exc}", param=field) from None
    except msgspec.DecodeError as exc:
        raise BodyError(f"the request body is not JSON: {exc}") from None
    most = _most(parsed)
    if parsed.prompt_cache_key:
        return Inference(parsed.model, _hash("pck", parsed.prompt_cache_key), "prompt_cache_key", most)
    if session:
        return Inference(parsed.model, _hash("session", session), "session", most)
    prefix = _leading(parsed)
    key = _hash("prefix", prefix) if prefix else None
    return Inference(parsed.model, key, "prefix" if prefix else None, most)


def _most(body: _Body) -> int | None:
    """What the request may generate: the larger of the two fields (an engine honours either; a client
    cannot lower its reservation with one while the other lets it generate more), each at least 1."""
    given = {"max_tokens": body.max_tokens, "max_completion_tokens": body.max_completion_tokens}
    for name, value in given.items():
        if value is not None and not 1 <= value <= MOST_TOKENS:
            raise BodyError(f"{name} must be between 1 and {MOST_TOKENS}, got {value}", param=name)
    values = [v for v in given.values() if v is not None]
    return max(values) if values else None


def _leading(body: _Body) -> str:
    if body.messages:
        parts = []
        for m in body.messages:
            content = m.content
            if isinstance(content, list):
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            parts.append(f"<{m.role}>{(content or '')[:PREFIX_CHARS]}")
            if m.role == "user":
                break
        return "".join(parts)
    if isinstance(body.prompt, str):
        return body.prompt[:PREFIX_CHARS]
    return ""


def _hash(kind: str, text: str) -> int:
    digest = hashlib.blake2b(f"{kind}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
