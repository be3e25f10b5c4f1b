"""Tenant limits at one edge (pure, no I/O; takes ``now``): requests and tokens per minute, global across
every edge, as GCRA (generic cell rate algorithm) whose authority is the Redis primary.

An edge does not ask Redis per request: it holds a *lease* of permits per (tenant, dimension) taken from the
global budget in one atomic step (``LEASE_SCRIPT``), spends them locally, and asks for the next lease
before the last runs out. Redis grants a lease only while the tenant's theoretical arrival time is within
the tolerance of now, so across all edges at most ``limit`` per minute pass, plus the tolerance (1 s of
the rate) and one lease per edge in flight. A lease an edge does not spend from for ``LEASE_TTL_S`` goes back
(one in use stays until it is spent, however old: what an edge holds is bounded by the lease's size, not
its age), so a request waits for the primary only when the edge holds too little for it.

When the primary cannot be reached the edge enforces a local share of each limit (limit / number of
edges) on its own clock, so a Redis outage neither opens the gate nor closes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEASE_S = 0.25  # a lease holds this much of the tenant's global rate ...
LEASE_BURST_SHARE = 0.25  # ... at most this much of the burst over the edge processes sharing it
LEASE_TTL_S = 2.0  # leased permits unused this long go back to the primary (a debt is always paid)
OUTAGE_RETRY_S = 1.0  # after a failed lease, the local share decides this long before the primary is tried
TOLERANCE_S = 1.0  # default GCRA burst tolerance: this much of the rate may arrive at once

# KEYS[1]: the tenant's hash {tat: theoretical arrival time (ms), iv: the emission interval it was kept at}.
# ARGV: emission interval (ms per permit), tolerance (ms), permits wanted, permits needed (the request's cost
# not covered by what the edge holds: granted whole whenever any room is left, the excess carried as debt in
# the TAT), carry (permits spent beyond what was leased, always charged; negative: reserved and not used,
# given back, never below now). Returns {granted, ms until the next
# permit, TAT - now (ms)}. Redis's own clock: edges' clocks never meet. A new rate converts the permits ahead
# at once (the backlog in permits is kept, not its time at the old rate). Writes only HSET and PEXPIRE on
# ``meridian:limits:*`` (the edge's ACL user, fleet/acl.py).
LEASE_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local need = tonumber(ARGV[4])
local carry = tonumber(ARGV[5])
local saved = redis.call('HMGET', KEYS[1], 'tat', 'iv')
local tat = tonumber(saved[1] or '0') or 0
local was = tonumber(saved[2] or '0') or 0
if was > 0 and was ~= interval and tat > now then tat = now + (tat - now) * interval / was end
if tat < now then tat = now end
tat = math.max(now, tat + carry * interval)
local grant = 0
if tat <= now + tolerance then
  grant = math.max(need, math.min(want, math.floor((now + tolerance - tat) / interval)))
end
if grant > 0 or carry ~= 0 or was ~= interval then
  tat = tat + grant * interval
  redis.call('HSET', KEYS[1], 'tat', string.format('%.3f', tat), 'iv', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], math.ceil(tat - now + 60000))
end
return {grant, math.max(0, math.ceil(tat - tolerance - now)), math.ceil(tat - now)}
"""


@dataclass(slots=True)
class Bucket:
    """This edge's view of one (tenant, dimension) limit."""

    limit: int  # per minute, across every edge
    burst_s: float = TOLERANCE_S  # how much of the rate may arrive at once
    held: float = 0.0  # leased permits not yet spent; below 0, a debt this edge owes the primary
    used_at: float = 0.0  # monotonic time of the last lease or the last permit spent from it
    wait_s: float = 0.0  # Redis's word: no permit for this long after ``refused_at``
    refused_at: float = -math.inf
    asking: bool = False  # a lease request is in flight
    local_tat: float = 0.0  # the local-share GCRA (while the primary is unreachable)
    edges: int = 1  # live edge processes sharing the limit
    lease: int = 0  # permits a lease asks for (``share``); read on every request, so computed once

    def __post_init__(self) -> None:
        self.share(self.edges)

    def share(self, edges: int) -> None:
        """``edges`` processes share the limit. A lease is ``LEASE_S`` of the rate, less when many share it:
        leased permits not yet spent are charged at the primary, so what every process holds idle comes out
        of the burst the tenant's own arrivals need. Each holds up to two leases (the next is asked for at
        half of one; kept refunds are given back above two), so together at most half the burst is held
        (a quarter at the usual moment); the other half absorbs the arrivals' variation."""
        self.edges = edges
        self.lease = max(
            1, math.ceil(self.limit / 60.0 * min(LEASE_S, LEASE_BURST_SHARE * self.burst_s / edges))
        )

    @property
    def interval_s(self) -> float:
        return 60.0 / self.limit

    def lease_size(self) -> int:
        return self.lease

    def tolerance_s(self) -> float:
        """The GCRA tolerance: the tenant's burst, and at least one lease (6 rpm leases one request)."""
        return max(self.burst_s, self.lease * self.interval_s)

    def stale(self, now: float) -> bool:
        """Leased permits neither spent from nor topped up for ``LEASE_TTL_S``: not spent here any more,
        given back (``carry``)."""
        return self.held >= 1 and now - self.used_at > LEASE_TTL_S

    def take(self, cost: float, now: float) -> bool:
        """Spend ``cost`` leased permits if this edge holds all of them, fresh (never overdrawn: a cost
        above what is held leases the rest first)."""
        if self.held < cost or self.stale(now):
            return False
        self.held -= cost
        self.used_at = now
        return True

    def asked(self, need: int, now: float) -> int:
        """Permits to ask the primary for, ``need`` of them for the request asking (0: none, a lease asked
        ahead): a lease, or the need when larger; a stale lease asked ahead of nothing goes back alone."""
        return 0 if not need and self.stale(now) else max(self.lease, need)

    def shortfall(self, cost: float, now: float) -> int:
        """Permits to lease before ``cost`` can be spent (a stale lease goes back, it does not count)."""
        held = 0.0 if self.stale(now) else max(0.0, self.held)
        return max(0, math.ceil(cost - held))

    def carry(self, now: float) -> int:
        """Permits to settle with the primary: a debt (spent beyond what was leased: usage above its
        reservation) to charge, or (negative) to give back: settled reservations beyond what a lease holds,
        or a stale lease whole."""
        if self.held < 0:
            return math.ceil(-self.held)
        if self.stale(now):
            return -math.floor(self.held)
        return -math.floor(self.held - self.lease) if self.held > 2 * self.lease else 0

    def needs_lease(self, now: float) -> bool:
        """Ask for the next lease before this one runs out (not while Redis said to wait), or to settle a
        debt or give back permits at once."""
        if self.asking:
            return False
        if self.carry(now):
            return True
        return self.held < self.lease / 2 and now >= self.refused_at + self.wait_s

    def granted(
        self, permits: int, carried: int, wait_s: float, now: float, *, asked: float | None = None
    ) -> None:
        """The primary's answer: ``permits`` leased, ``carried`` settled (see ``carry``). A refusal's wait
        counts from when it was ``asked`` (the primary's clock read then), not from when a busy edge got
        round to the answer: else every millisecond of its event loop's lag would be a false 429."""
        self.asking = False
        self.held += permits + carried
        if permits:
            self.used_at = now
            self.refused_at, self.wait_s = -math.inf, 0.0
        else:
            self.refused_at, self.wait_s = (now if asked is None else asked), wait_s

    def retry_after(self, now: float) -> float:
        return max(self.interval_s, self.refused_at + self.wait_s - now)

    def refund(self, permits: float) -> None:
        """Permits taken but not used (a request refused on another limit, or a token reservation above the
        real usage; negative: used more than reserved, a debt once below 0)."""
        self.held += permits

    def local_share(self, cost: float, now: float, edges: int) -> bool:
        """GCRA on this edge's clock at 1/``edges`` of the limit (the primary is unreachable)."""
        interval = self.interval_s * edges
        tat = max(self.local_tat, now)
        if tat - now > self.burst_s:
            return False
        self.local_tat = tat + cost * interval
        return True


def prompt_tokens(prompt_chars: int) -> int:
    """A prompt's tokens before the engine counts them: ~4 characters a token."""
    return max(1, prompt_chars // 4)


def reservation(*, prompt_chars: int, max_tokens: int | None, context_length: int | None, cap: int) -> int:
    """What a request may cost in tokens: its prompt's estimate plus what it may generate — ``max_tokens``
    when given, else what the model's context leaves after the prompt (an engine generates up to that),
    at most ``cap``. Limits, the fair queue and budgets all reserve this."""
    prompt = prompt_tokens(prompt_chars)
    if max_tokens is None:
        room = cap if context_length is None else context_length - prompt
        max_tokens = max(1, min(cap, room))
    return prompt + max_tokens


# KEYS[1]: hash of edge id -> "slots:expiry_ms"; ARGV: this edge's id, slots it wants to hold, the limit,
# how long a holding lives unless renewed (ms). Returns the slots it now holds: never more than the limit
# less what live holdings of other edges have; a crashed edge's holding expires.
SLOTS_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local all = redis.call('HGETALL', KEYS[1])
local others = 0
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    local held, expiry = string.match(all[i + 1], '(%d+):(%d+)')
    if tonumber(expiry) < now then
      redis.call('HDEL', KEYS[1], all[i])
    else
      others = others + tonumber(held)
    end
  end
end
local grant = math.min(tonumber(ARGV[2]), math.max(0, tonumber(ARGV[3]) - others))
if grant > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], grant .. ':' .. (now + tonumber(ARGV[4])))
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) * 2)
return grant
"""
SLOTS_TTL_S = 10.0  # a holding not renewed for this long is another edge's to take
SLOTS_RECHECK_S = 0.05  # the primary had no slot for a request waiting here: not asked again before this

# KEYS[1]: hash of edge process id -> expiry (ms); ARGV: this process's id, how long its registration lives
# (ms). Registers it, forgets the expired, returns how many are live (the outage share's denominator).
EDGES_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
local all = redis.call('HGETALL', KEYS[1])
local live = 0
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) < now then redis.call('HDEL', KEYS[1], all[i]) else live = live + 1 end
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 3)
return live
"""


@dataclass(slots=True)
class Slots:
    """This edge's share of a tenant's concurrent-request limit: slots held (granted by the primary) and in
    use. It holds what it uses plus a few spare, asks for more when it has none spare, gives spare back when
    it holds more than twice the spare it keeps, and all of it once idle for a renewal period: a burst at one
    edge may find up to spare x (edges - 1) slots idle elsewhere for that long. The request that takes the
    last spare slot has more asked for in the background. When the primary had no slot for a request waiting
    here, the next ones that find none held are refused without asking it again for ``SLOTS_RECHECK_S``: a
    tenant flooding past its limit costs the primary a call per edge that often, not one per request."""

    limit: int
    held: int = 0
    in_use: int = 0
    waiting: int = 0  # requests waiting for the primary's answer to a bigger holding
    local: int = 0  # in use under the local share (the primary unreachable)
    asking: bool = False  # a bigger holding asked for ahead, in the background
    refused_at: float = -math.inf  # when the primary last had no slot for a request waiting here

    def spare(self) -> int:
        return max(1, self.limit // 20)

    def take(self) -> bool:
        if self.in_use < self.held:
            self.in_use += 1
            return True
        return False

    def refused(self, now: float) -> bool:
        """The primary had no slot for a request waiting here a moment ago: do not ask it again yet."""
        return now - self.refused_at < SLOTS_RECHECK_S

    def needs_more(self) -> bool:
        """The last spare slot was just taken: ask for more ahead (one call at a time), so the next request
        does not wait for the primary."""
        return not self.asking and self.in_use >= self.held and self.held < self.limit

    def wanted(self) -> int:
        """What to hold: what is in use, what waits for a slot, and the spare."""
        return min(self.limit, self.in_use + self.waiting + self.spare())

    def release(self) -> int | None:
        """One request done; the holding to go down to when too much is idle (None: keep it)."""
        self.in_use -= 1
        if self.held - self.in_use > 2 * self.spare():
            return self.in_use + self.spare()
        return None

    def take_local(self, edges: int) -> bool:
        """A slot of this edge's share while the primary cannot be asked; requests still running on held
        slots count toward it (the primary may already have given those slots to the other edges)."""
        if self.local + self.in_use < max(1, self.limit // edges):
            self.local += 1
            return True
        return False
