"""The open-loop load (I/O): each scheduled arrival is sent at its time whatever the ones before it are
doing, as a streamed chat completion to its population's edge with its tenant's key; each outcome is
classified and timed from the schedule."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from meridian.pressure.record import Outcome
from meridian.pressure.schedule import Arrival

REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Target:
    """Where a population's requests go and as whom."""

    edges: Mapping[str, str]  # population -> its nearest edge's URL
    client_ip: Mapping[str, str]  # population -> an address GeoIP places there (X-Forwarded-For)
    keys: Mapping[str, str]  # tenant -> API key
    model: str
    max_tokens: int


async def drive(arrivals: Sequence[Arrival], target: Target, t0: float | None = None) -> list[Outcome]:
    """Offer every arrival at its time (from ``t0``, monotonic; now if None); returns every outcome."""
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    start = time.monotonic() if t0 is None else t0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        for a in arrivals:
            delay = start + a.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(session, a, target, start)))
        return list(await asyncio.gather(*tasks))


async def _one(session: aiohttp.ClientSession, a: Arrival, target: Target, start: float) -> Outcome:
    due = start + a.at
    body = {
        "model": target.model,
        "stream": True,
        "max_tokens": target.max_tokens,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": f"pressure {a.population} {a.at:.3f}"}],
    }
    headers = {
        "Authorization": f"Bearer {target.keys[a.tenant]}",
        "X-Forwarded-For": target.client_ip[a.population],
    }
    first: float | None = None
    try:
        async with session.post(
            target.edges[a.population] + "/v1/chat/completions", json=body, headers=headers
        ) as r:
            region = r.headers.get("X-Meridian-Region")
            if r.status != 200:
                return _refused(a, r.status, await r.read(), region, time.monotonic() - due)
            text = b""
            async for chunk in r.content.iter_any():
                if first is None:
                    first = time.monotonic() - due
                text += chunk
            end = time.monotonic() - due
            kind = "ok" if text.rstrip().endswith(b"data: [DONE]") and b'"error"' not in text else "cut"
            detail = _stream_error(text) if kind == "cut" else ""
            return Outcome(
                a.at, a.population, a.tenant, 200, kind, region, first, end, detail, end, _tokens(text)
            )
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
        return _broken(a, "cut", 200, first, due, exc)
    except TimeoutError as exc:
        return _broken(a, "timeout", 0, first, due, exc)
    except (aiohttp.ClientError, OSError) as exc:
        return _broken(a, "connect", 0, None, due, exc)


def _stream_error(text: bytes) -> str:
    """The message of the error event a stream ended with ("": none, it was cut short)."""
    for line in reversed(text.split(b"\n")):
        if line.startswith(b"data: {") and b'"error"' in line:
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                return str(json.loads(line[6:])["error"]["message"])[:160]
    return ""


def _tokens(text: bytes) -> int | None:
    """Prompt + completion tokens from a stream's usage chunk (the last event carrying one)."""
    for line in reversed(text.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                usage = json.loads(line[6:])["usage"]
                if usage:
                    return int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
    return None


def _broken(
    a: Arrival, kind: str, status: int, first: float | None, due: float, exc: BaseException
) -> Outcome:
    """No whole answer: when it ended (the latency is the time until it broke, not a success's)."""
    detail = f"{type(exc).__name__}: {exc}"[:160]
    return Outcome(
        a.at, a.population, a.tenant, status, kind, None, first, None, detail, time.monotonic() - due
    )


# refusals with a clear, retryable answer: shed, a model starting, an edge whose key set is not in (yet)
SHED_CODES = frozenset({"overloaded", "model_starting", "api_keys_loading", "api_keys_stale"})


def _refused(a: Arrival, status: int, raw: bytes, region: str | None, took: float) -> Outcome:
    """A non-200 answer, by what it says: refused with a clear answer (OpenAI's error shape) or failed."""
    try:
        err = json.loads(raw)["error"]
        code = err.get("code") if isinstance(err, dict) and "message" in err else None
        detail = str(err.get("message", ""))[:160]
    except (ValueError, KeyError, TypeError, AttributeError):
        code, detail = None, raw[:160].decode(errors="replace")
    if status == 429 and code == "rate_limit_exceeded":
        kind = "limited"
    elif status in (429, 503) and code in SHED_CODES:
        kind = "shed"
    elif status in (502, 503, 504):
        kind = "upstream"
    else:
        kind = f"http {status}"
    return Outcome(a.at, a.population, a.tenant, status, kind, region, None, took, detail, took)
