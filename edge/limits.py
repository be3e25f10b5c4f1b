"""Tenant limits at one edge (pure, no I/O; takes ``now``): requests and tokens per minute, global across
every edge, as GCRA (generic cell rate algorithm) whose authority is the Redis primary.

An edge does not ask Redis per request: it holds a *lease* of permits per (tenant, dimension) taken from the
global budget in one atomic step (``LEASE_SCRIPT``), spends them locally, and asks for the next lease
before the last runs out. Redis grants a lease only while the tenant's theoretical arrival time is within
the tolerance of now, so across all edges at most ``limit`` per minute pass, plus the tolerance (1 s of
the rate) and one lease per edge in flight. A lease an edge does not use within ``LEASE_TTL_S`` is dropped
(spent): the price of not asking per request is at most that much under-admission when a tenant's
traffic stops.

When the primary cannot be reached the edge enforces a local share of each limit (limit / number of
edges) on its own clock, so a Redis outage neither opens the gate nor closes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEASE_S = 0.25  # a lease holds this much of the tenant's global rate
LEASE_TTL_S = 2.0  # unused leased permits older than this are dropped
TOLERANCE_S = 1.0  # GCRA burst tolerance: this much of the rate may arrive at once

# KEYS[1]: the tenant's TAT (ms); ARGV: emission interval (ms per permit), tolerance (ms), permits wanted.
# Returns {granted, ms until the next permit, TAT - now (ms)}. Redis's own clock: edges' clocks never meet.
LEASE_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local room = math.floor((now + tolerance - tat) / interval)
local grant = want
if room < want then grant = math.max(room, 0) end
if grant == 0 and tat <= now + tolerance then grant = 1 end
if grant > 0 then
  tat = tat + grant * interval
  redis.call('SET', KEYS[1], tat, 'PX', math.ceil(tat - now + 60000))
end
return {grant, math.max(0, math.ceil(tat - tolerance - now)), math.ceil(tat - now)}
"""


@dataclass(slots=True)
class Bucket:
    """This edge's view of one (tenant, dimension) limit."""

    limit: int  # per minute, across every edge
    held: float = 0.0  # leased permits not yet spent
    leased_at: float = 0.0  # monotonic time of the last lease
    wait_s: float = 0.0  # Redis's word: no permit for this long after ``refused_at``
    refused_at: float = -math.inf
    asking: bool = False  # a lease request is in flight
    local_tat: float = 0.0  # the local-share GCRA (while the primary is unreachable)

    @property
    def interval_s(self) -> float:
        return 60.0 / self.limit

    def lease_size(self) -> int:
        return max(1, math.ceil(self.limit / 60.0 * LEASE_S))

    def expire(self, now: float) -> None:
        if self.held and now - self.leased_at > LEASE_TTL_S:
            self.held = 0.0

    def take(self, cost: float, now: float) -> bool:
        """Spend ``cost`` leased permits if held (a request's cost may overdraw a lease it started on)."""
        self.expire(now)
        if self.held <= 0:
            return False
        self.held -= cost
        return True

    def needs_lease(self, now: float) -> bool:
        """Ask for the next lease before this one runs out (not while Redis said to wait)."""
        return not self.asking and self.held < self.lease_size() / 2 and now >= self.refused_at + self.wait_s

    def granted(self, permits: int, wait_s: float, now: float) -> None:
        self.asking = False
        self.expire(now)
        self.held += permits
        if permits:
            self.leased_at = now
        else:
            self.refused_at, self.wait_s = now, wait_s

    def retry_after(self, now: float) -> float:
        return max(self.interval_s, self.refused_at + self.wait_s - now)

    def refund(self, permits: float) -> None:
        """Permits taken but not used (a request refused on another limit, or a token reservation above the
        real usage; negative: used more than reserved)."""
        self.held += permits

    def local_share(self, cost: float, now: float, edges: int) -> bool:
        """GCRA on this edge's clock at 1/``edges`` of the limit (the primary is unreachable)."""
        interval = self.interval_s * edges
        tat = max(self.local_tat, now)
        if tat - now > TOLERANCE_S:
            return False
        self.local_tat = tat + cost * interval
        return True


def estimate_tokens(prompt_chars: int, max_tokens: int | None, default_max: int) -> int:
    """A request's token reservation: its prompt at ~4 characters a token, plus what it may generate."""
    return max(1, prompt_chars // 4) + (max_tokens if max_tokens is not None else default_max)


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


@dataclass(slots=True)
class Slots:
    """This edge's share of a tenant's concurrent-request limit: slots held (granted by the primary) and in
    use. It holds what it uses plus a few spare, asks for more when it has none spare, gives spare back when
    it holds more than twice the spare it keeps, and all of it once idle for a renewal period: a burst at one
    edge may find up to spare x (edges - 1) slots idle elsewhere for that long."""

    limit: int
    held: int = 0
    in_use: int = 0
    waiting: int = 0  # requests waiting for the primary's answer to a bigger holding
    local: int = 0  # in use under the local share (the primary unreachable)

    def spare(self) -> int:
        return max(1, self.limit // 20)

    def take(self) -> bool:
        if self.in_use < self.held:
            self.in_use += 1
            return True
        return False

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
        if self.local < max(1, self.limit // edges):
            self.local += 1
            return True
        return False
