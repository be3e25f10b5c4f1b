"""The simulated inference engine's scheduler (pure, no I/O): continuous batching under a maximum batch and
a KV cache measured in tokens, a FIFO waiting queue, a prefix cache (an LRU of block hashes whose hits skip
prefill), and LoRA adapter slots. The app drives it: ``submit`` a job, ``admit`` what fits (in arrival
order, as vLLM's scheduler does), ``finish`` it when its last token is out.

A job reserves its prompt plus ``max_tokens`` of KV cache when admitted (vLLM allocates as it goes; the
reservation makes the simulator's queueing deterministic and errs on the side of queueing)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

BLOCK_CHARS = 64  # one KV block: 16 tokens of ~4 characters, as vLLM's default block size


def block_hashes(text: str, *, block_chars: int = BLOCK_CHARS) -> tuple[bytes, ...]:
    """The prompt's full blocks, each hash chained to the one before (a block is reused only after the
    same prefix, as in vLLM's prefix caching)."""
    out: list[bytes] = []
    prev = b""
    for i in range(0, len(text) - block_chars + 1, block_chars):
        prev = hashlib.blake2b(prev + text[i : i + block_chars].encode(), digest_size=8).digest()
        out.append(prev)
    return tuple(out)


def tokens_of(text: str) -> int:
    return max(1, len(text) // 4)


@dataclass(eq=False, slots=True)
class Job:
    model: str  # the base model
    adapter: str | None
    blocks: tuple[bytes, ...]
    prompt_tokens: int
    max_tokens: int
    cached_tokens: int = 0  # set at admission: the prompt's tokens found in the prefix cache
    loads_adapter: bool = False  # set at admission: its adapter had to be loaded first

    @property
    def reserve(self) -> int:
        return self.prompt_tokens + self.max_tokens


@dataclass
class Engine:
    max_batch: int = 32
    kv_tokens: int = 65_536
    max_lora: int = 4
    block_tokens: int = 16
    prefix_blocks: int = 4096  # the prefix cache's capacity, in blocks
    running: list[Job] = field(default_factory=list)
    waiting: deque[Job] = field(default_factory=deque)
    kv_used: int = 0
    adapters: OrderedDict[str, int] = field(default_factory=OrderedDict)  # loaded -> running jobs, LRU
    cache: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    prefix_queries: int = 0  # tokens looked up in the prefix cache (vLLM's prefix_cache_queries)
    prefix_hits: int = 0

    def submit(self, job: Job) -> None:
        self.waiting.append(job)

    def admit(self) -> list[Job]:
        """Jobs that start now, head of the queue first: stops at the first that does not fit."""
        started: list[Job] = []
        while self.waiting and len(self.running) < self.max_batch:
            job = self.waiting[0]
            if self.kv_used + job.reserve > self.kv_tokens and self.running:
                break  # an oversized job alone is let through rather than blocking the queue forever
            if job.adapter is not None and not self._slot_for(job.adapter):
                break
            self.waiting.popleft()
            if job.adapter is not None:
                job.loads_adapter = job.adapter not in self.adapters
                self.adapters[job.adapter] = self.adapters.get(job.adapter, 0) + 1
                self.adapters.move_to_end(job.adapter)
            job.cached_tokens = min(self.match(job.blocks) * self.block_tokens, job.prompt_tokens)
            self.prefix_queries += job.prompt_tokens
            self.prefix_hits += job.cached_tokens
            self._remember(job.blocks)
            self.kv_used += job.reserve
            self.running.append(job)
            started.append(job)
        return started

    def finish(self, job: Job) -> None:
        if job in self.running:
            self.running.remove(job)
            self.kv_used -= job.reserve
            if job.adapter is not None:
                self.adapters[job.adapter] -= 1
        elif job in self.waiting:
            self.waiting.remove(job)

    def match(self, blocks: Iterable[bytes]) -> int:
        """How many leading blocks are cached."""
        n = 0
        for b in blocks:
            if b not in self.cache:
                break
            n += 1
        return n

    def _remember(self, blocks: tuple[bytes, ...]) -> None:
        cache = self.cache
        for b in blocks:
            if b in cache:
                cache.move_to_end(b)
            else:
                cache[b] = None
        while len(cache) > self.prefix_blocks:
            cache.popitem(last=False)

    def _slot_for(self, adapter: str) -> bool:
        """The adapter is loaded, or a slot is free, or an idle adapter can be evicted for it."""
        if adapter in self.adapters or len(self.adapters) < self.max_lora:
            return True
        idle = next((a for a, n in self.adapters.items() if n == 0), None)
        if idle is None:
            return False
        del self.adapters[idle]
        return True

    @property
    def kv_usage(self) -> float:
        return min(1.0, self.kv_used / self.kv_tokens)

    def running_adapters(self) -> list[str]:
        return sorted({j.adapter for j in self.running if j.adapter is not None})

    def waiting_adapters(self) -> list[str]:
        return sorted({j.adapter for j in self.waiting if j.adapter is not None})
