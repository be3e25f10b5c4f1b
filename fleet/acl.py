"""Who may do what on the state store (pure, no I/O): the Redis ACL users of a Meridian fleet.

- the control plane reads and writes routing state, the audit stream and the change channel;
- each edge has its own user (``meridian-edge-<edge>``, the edge named by its region): it reads routing
  state and follows the change channel (on its regional replica), may append to its own observations
  stream (``meridian:observations:<edge>``), add to its own usage and traffic counters (HINCRBY and EXPIRE
  on ``meridian:usage:<edge>:*`` and ``meridian:traffic:<edge>:*``), lease tenant limits by script
  (``meridian:limits:*``, on the primary) and keep its wake marks (HSET, HDEL and PEXPIRE on
  ``meridian:wake:*``, whose values the autoscaler bounds) — nothing else: it cannot write routing state,
  tenants or keys, announce a change, or write in another edge's name, so a stolen edge credential cannot
  drain a region, mint a key, or pass its observations and usage off as another edge's (the control plane
  takes an observation's edge from the stream it is in, and bounds what each edge's counters may say);
- replication: what a replica needs to follow its primary;
- sentinel: what Redis Sentinel needs to monitor the data nodes and fail over (where Sentinel is used);
- the default user is off: no connection can authenticate as it (it has no password). It keeps every
  permission because Redis 7.0 replays an AOF's transactions as the default user and re-checks that user's
  ACL at each EXEC (fixed upstream by redis/redis#14545): with ``-@all`` every MULTI/EXEC, and every
  script's effects (which Redis 7 writes as MULTI/EXEC), is dropped from the data on restart
  (``tests/test_durability_functional.py``).
The limit scripts run under the edge's user: besides the writes above they need TIME (Redis's clock); a
script the edge needs that its user may not run fails NOPERM, which ``tests/test_limits_functional.py``
runs into on fleets with these users.
Every redis-server of the fleet (primary and replicas; ACLs are not replicated) loads the same file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fleet.keys import (
    CHANNEL_CHANGES,
    KEY_LIMITS,
    KEY_PREFIX,
    KEY_TRAFFIC,
    KEY_USAGE,
    KEY_WAKE,
    active_key,
    applied_key,
    cancel_key,
    observations_key,
)

CONTROL_PLANE = "meridian-controlplane"
EDGE_PREFIX = "meridian-edge-"  # + the edge's name: one user per edge
REPLICATION = "meridian-replication"
SENTINEL = "meridian-sentinel"

# off and without a password: unusable by any client; its permissions matter only to the AOF replay
DEFAULT_USER = "user default off ~* &* +@all"

RULES: dict[str, str] = {  # the users every fleet has; edges' users: edge_rule
    CONTROL_PLANE: f"~{KEY_PREFIX}:* &{KEY_PREFIX}:* +@all -@dangerous +info",
    REPLICATION: "+psync +replconf +ping",
    SENTINEL: (
        "allchannels +multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish +info "
        "+client|setname +client|kill +script|kill"
    ),
}


def edge_user(edge: str) -> str:
    """The ACL user of the edge named ``edge`` (a region name from regions.yaml)."""
    return EDGE_PREFIX + edge


def edge_rule(edge: str) -> str:
    """What the edge named ``edge`` may do (region names are ``[a-z0-9-]+``: no glob character, no colon,
    so one edge's patterns never match another's keys)."""
    return (
        f"resetchannels &{CHANNEL_CHANGES} %R~{KEY_PREFIX}:state:* %W~{observations_key(edge)} "
        f"%W~{applied_key(edge)} %W~{active_key(edge)} ~{cancel_key(edge)} "
        f"~{KEY_LIMITS}:* ~{KEY_USAGE}:{edge}:* ~{KEY_TRAFFIC}:{edge}:* ~{KEY_WAKE}:* -@all +@read "
        "+@connection +subscribe +unsubscribe +multi +exec +discard +xadd +evalsha +eval +script|load "
        "+hincrby +expire +hset +hdel +pexpire +time"
    )


@dataclass(frozen=True, slots=True)
class Credentials:
    """One password per user; ``edges``: each edge's name -> its user's password."""

    control_plane: str
    replication: str
    sentinel: str = ""  # no Sentinel user without a password
    edges: Mapping[str, str] = field(default_factory=dict)

    def password(self, user: str) -> str:
        if user.startswith(EDGE_PREFIX):
            return self.edges[user.removeprefix(EDGE_PREFIX)]
        return {CONTROL_PLANE: self.control_plane, REPLICATION: self.replication, SENTINEL: self.sentinel}[
            user
        ]

    def acl_file(self) -> str:
        """The ACL file every redis-server of the fleet loads (``--aclfile``)."""
        rules = RULES | {edge_user(edge): edge_rule(edge) for edge in self.edges}
        lines = [DEFAULT_USER]
        lines += [
            f"user {user} on >{self.password(user)} {rule}"
            for user, rule in rules.items()
            if self.password(user)
        ]
        return "\n".join(lines) + "\n"

    def url(self, user: str, host: str, port: int) -> str:
        return f"redis://{user}:{self.password(user)}@{host}:{port}/0"
