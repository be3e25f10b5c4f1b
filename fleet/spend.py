"""Spend budgets (pure, no I/O): the budget period a request falls in, and the script by which the Redis
primary reserves and settles a tenant's spend across every edge.

Money is counted in integer nano-dollars (1e-9 USD; prices: ``fleet.models.cost_nusd``): a price of $0.15 per
million tokens is 150 per token, exact for prices given to a thousandth of a dollar per million tokens, and
a month of $9 million still fits in the 2**53 a Lua number holds exactly.

A request reserves its maximum cost (its prompt's estimate and all it may generate) before it is sent and
settles on its real usage when it ends. Each edge process holds a *purse* reserved on the primary (a few
requests' worth, less as the budget runs out) and reserves requests from it locally; the primary grants
a purse only while the period's spend plus what every live edge process holds stays within the budget, so
concurrency cannot overspend: what passes is reserved in advance, and a request costs at most what it
reserved (the overspend is at most the difference of one request's real prompt from its estimate). Near
the end of a budget the purses shrink to one request, so what one edge holds idle does not refuse
another's."""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

Period = Literal["day", "month"]
KEEP_S = 40 * 86_400  # a period's hash stays this long after its last write (the usage ledger keeps bills)


@dataclass(frozen=True, slots=True)
class Window:
    """One budget period: its id (in the store's key) and when it ends (unix s, UTC)."""

    id: str
    ends_at: float


def window(period: Period, unix_s: float) -> Window:
    """The UTC day or calendar month ``unix_s`` falls in."""
    at = datetime.fromtimestamp(unix_s, UTC)
    if period == "day":
        start = datetime(at.year, at.month, at.day, tzinfo=UTC)
        return Window(f"d{at:%Y%m%d}", start.timestamp() + 86_400)
    days = calendar.monthrange(at.year, at.month)[1]
    start = datetime(at.year, at.month, 1, tzinfo=UTC)
    return Window(f"m{at:%Y%m}", start.timestamp() + days * 86_400)


def ttl_ms(w: Window, unix_s: float) -> int:
    return math.ceil((w.ends_at - unix_s + KEEP_S) * 1000)


# KEYS[1]: the tenant's period hash {spent: nano-USD paid, r:<edge process id>: nano-USD it holds reserved};
# KEYS[2]: the live edge processes (meridian:limits:edges, edge id -> expiry ms).
# ARGV: this edge process's id, nano-USD it would like to reserve (0: none), the budget (nano-USD), nano-USD
# of its reservation to let go, nano-USD paid (added to spent), the hash's ttl (ms), nano-USD the requests
# waiting need, nano-USD the one asking needs (the first of the three asks that fits is granted).
# Reservations of edge processes no longer live lapse (their requests died with them). Returns {nano-USD
# reserved now, spent, reserved by every live edge}.
# Runs under the edge's ACL user: HGETALL, HGET, HINCRBY, HDEL, PEXPIRE and TIME only.
BUDGET_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local me = 'r:' .. ARGV[1]
local want = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local release = tonumber(ARGV[4])
local paid = tonumber(ARGV[5])
if release > 0 then redis.call('HINCRBY', KEYS[1], me, -release) end
if paid > 0 then redis.call('HINCRBY', KEYS[1], 'spent', paid) end
local all = redis.call('HGETALL', KEYS[1])
local spent, held = 0, 0
for i = 1, #all, 2 do
  local f, v = all[i], tonumber(all[i + 1])
  if f == 'spent' then
    spent = v
  elseif f == me then
    if v <= 0 then redis.call('HDEL', KEYS[1], f) else held = held + v end
  else
    local expiry = tonumber(redis.call('HGET', KEYS[2], string.sub(f, 3)) or '0')
    if v <= 0 or expiry < now then redis.call('HDEL', KEYS[1], f) else held = held + v end
  end
end
local granted = 0
local asks = {want, tonumber(ARGV[7]), tonumber(ARGV[8])}
for _, ask in ipairs(asks) do
  if ask > 0 and spent + held + ask <= budget then
    granted = ask
    break
  end
end
if granted > 0 then
  redis.call('HINCRBY', KEYS[1], me, granted)
  held = held + granted
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6]))
return {granted, spent, held}
"""


PURSE_REQUESTS = 4  # a purse holds at least this many requests of the size asked for, while the budget allows
PURSE_S = 1.0  # and what this process reserved in about this long (its recent spending rate)
PURSE_IDLE_S = 2.0  # a purse unused this long goes back (another edge may need it)
REFUSAL_S = 0.5  # a request the primary could not cover is refused this long without asking again


@dataclass(frozen=True, slots=True)
class Settlement:
    """What one call to the primary settles: reservation let go, and spend paid, of which ``owed`` came
    out of the purse's reservation and ``unheld`` was reserved on the outage share (never on the primary)."""

    owed: int
    unheld: int
    surplus: int

    @property
    def release(self) -> int:
        return self.owed + self.surplus

    @property
    def paid(self) -> int:
        return self.owed + self.unheld


@dataclass(slots=True)
class Purse:
    """What one edge process holds of a tenant's budget period (nano-USD): ``held`` reserved for it on the
    primary, of which ``in_use`` by requests in flight and ``owed`` the real cost of ended ones, still to
    be paid (moved from its reservation to the period's spend on the next call)."""

    budget: int
    held: int = 0
    in_use: int = 0
    owed: int = 0
    left: int | None = None  # the primary's last word: the budget less spend and every edge's holds
    spent: int = 0  # the primary's last word: the period's spend
    held_all: int = 0  # the primary's last word: what every live edge process holds
    used_at: float = 0.0
    last: int = 0  # the last request's reservation (sizes a top-up)
    waiting: int = 0  # reserved by requests waiting for a call to the primary in flight
    window_at: float = 0.0  # this process's recent spending rate: the current window's start
    window_cost: int = 0  # ... and what was reserved in it
    rate: float = 0.0  # nano-USD per second reserved in the last full window
    refused_at: float = -1e18  # when the primary last could not grant ``refused_need``
    refused_need: int = 0
    outage_in_use: int = 0  # reserved on this process's share while the primary is out
    unheld: int = 0  # what requests reserved on the outage share cost, still to be paid

    @property
    def free(self) -> int:
        return self.held - self.in_use - self.owed

    def take(self, cost: int, now: float) -> bool:
        """Reserve ``cost`` from the purse, if it holds that much free."""
        if self.free < cost:
            return False
        self.in_use += cost
        self.used_at, self.last = now, cost
        if now - self.window_at >= PURSE_S:
            elapsed = now - self.window_at
            self.rate = self.window_cost / elapsed if elapsed < 2 * PURSE_S else 0.0
            self.window_at, self.window_cost = now, 0
        self.window_cost += cost
        return True

    def ask(self, cost: int, edges: int) -> tuple[int, int, int]:
        """(what to ask the primary for, what the requests waiting need, what this one needs) for a request
        of ``cost``: a purse of what this process reserves in ``PURSE_S`` (at least a few requests), within
        half of this process's share of what was left — near the end, whole requests only (no sliver
        another edge could have used)."""
        one = max(0, cost - self.free)
        waiting = max(one, cost + self.waiting - self.free)
        room, target = self._room(edges), self._target(cost, PURSE_S)
        want = target if target <= room else cost * (room // max(1, cost))
        return max(waiting, want), waiting, one

    def _room(self, edges: int) -> int:
        """Half of this process's share of what the primary last said was left: the most a purse holds."""
        left = self.budget if self.left is None else self.left
        return max(0, left // (2 * max(1, edges)))

    def _target(self, cost: int, seconds: float) -> int:
        """A purse of what this process reserves in ``seconds``, at least ``PURSE_REQUESTS`` of ``cost``."""
        return max(PURSE_REQUESTS * cost, int(self.rate * seconds))

    def ahead(self, edges: int, now: float) -> int:
        """What to top the purse up by with the next settlement (one call a ``PURSE_S`` or so): back to two
        ``PURSE_S`` of this process's recent reserving, at least ``PURSE_REQUESTS`` of its last request,
        so a steady stream of requests never waits for a call (0: enough is free, the purse went unused
        for ``PURSE_S`` or was refused a moment ago, or the budget is near its end: there a request asks
        for itself)."""
        target = self._target(self.last, 2 * PURSE_S)
        if now - self.used_at >= PURSE_S or self.free >= target or now - self.refused_at < REFUSAL_S:
            return 0
        return 0 if target > self._room(edges) else target - self.free

    def refused(self, cost: int, now: float) -> bool:
        """The primary could not grant this much (or less) a moment ago: no need to ask again so soon."""
        return now - self.refused_at < REFUSAL_S and cost - self.free >= self.refused_need

    def rebudget(self, budget: int) -> None:
        """The budget changed: what the primary said was left, and its refusal, no longer hold."""
        self.budget, self.left, self.refused_at = budget, None, -1e18

    def granted(self, amount: int, spent: int, held_all: int, *, need: int = 0, now: float = 0.0) -> None:
        """The primary's answer to a call that needed at least ``need`` for the request asking (0: none)."""
        if need and not amount:
            self.refused_at, self.refused_need = now, need
        self.held += amount
        self.spent, self.held_all = spent, held_all
        self.left = self.budget - spent - held_all

    def take_share(self, cost: int, edges: int, now: float) -> bool:
        """The primary is out: reserve ``cost`` on this process's share of what it last said was left (of
        the whole budget when it never said)."""
        left = self.budget if self.left is None else self.left
        if self.outage_in_use + self.unheld + cost > left // max(1, edges):
            return False
        self.outage_in_use += cost
        self.used_at = now
        return True

    def settle(self, reserved: int, cost: int, now: float, *, share: bool = False) -> None:
        """A request that reserved ``reserved`` (``share``: on the outage share) ended costing ``cost``."""
        if share:
            self.outage_in_use -= reserved
            self.unheld += cost
        else:
            self.in_use -= reserved
            self.owed += cost
        self.used_at = now

    def settlement(self, now: float) -> Settlement:
        """What the next call settles: what ended requests cost, and the free reservation once the purse
        is idle (another edge may need it)."""
        idle = now - self.used_at >= PURSE_IDLE_S and not self.in_use
        return Settlement(self.owed, self.unheld, max(0, self.free) if idle else 0)

    def settled(self, s: Settlement) -> None:
        self.held -= s.release
        self.owed -= s.owed
        self.unheld -= s.unheld

    def due(self, now: float) -> bool:
        """Anything to settle with the primary."""
        s = self.settlement(now)
        return bool(s.release or s.paid)
