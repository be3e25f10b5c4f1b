"""Token usage at the edge (pure, no I/O): what one answer used — read from its ``usage`` (a buffered
answer's body, a stream's final usage chunk) or, for a stream that sends none, its events counted as they
flow — and the usage ledger: per tenant, model, region and hour, the rows a writer takes in batches."""

from __future__ import annotations

import msgspec

from fleet.usage import UsageRow, hour_of, minute_of

MAX_ROWS = 200_000  # rows held while the store is unreachable; past it new keys are counted as dropped


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    input_tokens: int = 0  # the Responses API's names
    output_tokens: int = 0


class _Answer(msgspec.Struct):
    usage: _Usage | None = None


_ANSWER = msgspec.json.Decoder(_Answer)
_EVENT = b"data: {"


def _usage(data: bytes) -> _Usage | None:
    try:
        return _ANSWER.decode(data).usage
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class Tally:
    """One answer's tokens: exact when the region reported ``usage``, else the stream's events counted
    (vLLM, SGLang and TGI send one event per generated token)."""

    __slots__ = ("events", "usage")

    def __init__(self) -> None:
        self.events = 0
        self.usage: _Usage | None = None

    def body(self, data: bytes) -> None:
        """A buffered answer's body."""
        self.usage = _usage(data) if b'"usage"' in data else None

    def chunk(self, data: bytes) -> None:
        """A piece of an event stream, as it flows to the client."""
        self.events += data.count(_EVENT)
        if b'"prompt_tokens"' in data:  # the usage chunk (stream_options.include_usage)
            for line in data.split(b"\n"):
                if line.startswith(_EVENT) and b'"prompt_tokens"' in line:
                    self.usage = _usage(line[6:]) or self.usage

    @property
    def exact(self) -> bool:
        return self.usage is not None

    def tokens(self, prompt_estimate: int) -> tuple[int, int]:
        """(prompt, completion) tokens: the reported usage, else the estimate and the events counted."""
        u = self.usage
        if u is not None:
            prompt = u.prompt_tokens or u.input_tokens
            return prompt, u.completion_tokens or u.output_tokens or max(0, u.total_tokens - prompt)
        return prompt_estimate, self.events


class Ledger:
    """Usage rows per (tenant, model, region, hour) since the writer's last batch."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str, int], UsageRow] = {}
        self.traffic: dict[tuple[str, str, int], UsageRow] = {}  # (model, region, minute): every tenant
        self.dropped = 0

    def add(
        self,
        *,
        tenant: str,
        model: str,
        region: str,
        unix_s: float,
        prompt: int,
        completion: int,
        error: bool,
        spend_nusd: int = 0,
    ) -> None:
        key = (tenant, model, region, hour_of(unix_s))
        row = self.rows.get(key)
        if row is None:
            if len(self.rows) >= MAX_ROWS:
                self.dropped += 1
                return
            row = self.rows[key] = UsageRow()
        for r in (row, self._traffic(model, region, unix_s)):
            r.requests += 1
            r.prompt_tokens += prompt
            r.completion_tokens += completion
            r.errors += error
            r.spend_nusd += spend_nusd

    def _traffic(self, model: str, region: str, unix_s: float) -> UsageRow:
        key = (model, region, minute_of(unix_s))
        row = self.traffic.get(key)
        if row is None:
            row = self.traffic[key] = UsageRow()
        return row

    def drain(self) -> dict[tuple[str, str, str, int], UsageRow]:
        rows, self.rows = self.rows, {}
        return rows

    def drain_traffic(self) -> dict[tuple[str, str, int], UsageRow]:
        traffic, self.traffic = self.traffic, {}
        return traffic

    def restore(self, batch: dict[tuple[str, str, str, int], UsageRow]) -> None:
        """A batch the store did not take goes back in, merged with what came since."""
        for key, row in batch.items():
            mine = self.rows.get(key)
            if mine is None:
                self.rows[key] = row
            else:
                mine.merge(row)
