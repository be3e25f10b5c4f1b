"""Spend budgets (pure, no I/O): the budget period a request falls in, and the script by which the Redis
primary reserves and settles a tenant's spend across every edge.

Money is counted in integer nano-dollars (1e-9 USD; prices: ``fleet.models.cost_nusd``): a price of $0.15 per
million tokens is 150 per token, exact for prices given to a thousandth of a dollar per million tokens, and
a month of $9 million still fits in the 2**53 a Lua number holds exactly.

A request reserves its maximum cost (its prompt's estimate and all it may generate) before it is sent and
settles on its real usage when it ends. The primary admits a reservation only while the period's spend plus
what every live edge process holds reserved stays within the budget, so concurrency cannot overspend: what
passes is paid for in advance, and a request costs at most what it reserved (the overspend is at most the
difference of one request's real prompt from its estimate)."""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from fleet.state import KEY_PREFIX

Period = Literal["day", "month"]
KEY_BUDGETS = f"{KEY_PREFIX}:limits:budget"  # + ":<tenant>:<period id>": the period's spend and holds
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


def budget_key(tenant: str, w: Window) -> str:
    return f"{KEY_BUDGETS}:{tenant}:{w.id}"


def ttl_ms(w: Window, unix_s: float) -> int:
    return math.ceil((w.ends_at - unix_s + KEEP_S) * 1000)


# KEYS[1]: the tenant's period hash {spent: nano-USD paid, r:<edge process id>: nano-USD it holds reserved};
# KEYS[2]: the live edge processes (meridian:limits:edges, edge id -> expiry ms).
# ARGV: this edge process's id, nano-USD to reserve now (0: none), the budget (nano-USD), nano-USD of its
# earlier reservations to let go, nano-USD they really cost (added to spent), the hash's ttl (ms).
# Reservations of edge processes no longer live lapse (their requests died with them). Returns {1 if the
# reservation was made else 0, spent, reserved by every live edge}. Runs under the edge's ACL user: HGETALL,
# HGET, HINCRBY, HDEL, PEXPIRE and TIME only.
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
if want > 0 and spent + held + want <= budget then
  redis.call('HINCRBY', KEYS[1], me, want)
  held = held + want
  granted = 1
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6]))
return {granted, spent, held}
"""
