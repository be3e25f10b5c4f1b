"""Who may do what on the state store (pure, no I/O): the Redis ACL users of a Meridian fleet.

- the control plane reads and writes routing state, the audit stream and the change channel;
- an edge reads routing state and follows the change channel (on its regional replica), may append to
  the observations stream, lease tenant limits by script (``meridian:limits:*``, on the primary) and add
  to usage and traffic counters (HINCRBY and EXPIRE on ``meridian:usage:*`` and ``meridian:traffic:*``) and
  keep its wake marks (HSET, HDEL and PEXPIRE on ``meridian:wake:*``) —
  nothing else: it cannot write routing state, tenants or keys, or announce a change, so a stolen edge
  credential cannot drain a region or mint a key;
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

from dataclasses import dataclass

from fleet.state import CHANNEL_CHANGES, KEY_OBSERVATIONS, KEY_PREFIX
from fleet.usage import KEY_TRAFFIC, KEY_USAGE
from fleet.wake import KEY_WAKE

CONTROL_PLANE = "meridian-controlplane"
EDGE = "meridian-edge"
REPLICATION = "meridian-replication"
SENTINEL = "meridian-sentinel"

# off and without a password: unusable by any client; its permissions matter only to the AOF replay
DEFAULT_USER = "user default off ~* &* +@all"

RULES: dict[str, str] = {
    CONTROL_PLANE: f"~{KEY_PREFIX}:* &{KEY_PREFIX}:* +@all -@dangerous +info",
    EDGE: (
        f"resetchannels &{CHANNEL_CHANGES} %R~{KEY_PREFIX}:state:* %W~{KEY_OBSERVATIONS} "
        f"~{KEY_PREFIX}:limits:* ~{KEY_USAGE}:* ~{KEY_TRAFFIC}:* ~{KEY_WAKE}:* -@all +@read +@connection "
        "+subscribe +unsubscribe +multi +exec +discard +xadd +evalsha +eval +script|load +hincrby +expire "
        "+hset +hdel +pexpire +time"
    ),
    REPLICATION: "+psync +replconf +ping",
    SENTINEL: (
        "allchannels +multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish +info "
        "+client|setname +client|kill +script|kill"
    ),
}


@dataclass(frozen=True, slots=True)
class Credentials:
    """One password per user."""

    control_plane: str
    edge: str
    replication: str
    sentinel: str = ""  # no Sentinel user without a password

    def password(self, user: str) -> str:
        return {
            CONTROL_PLANE: self.control_plane,
            EDGE: self.edge,
            REPLICATION: self.replication,
            SENTINEL: self.sentinel,
        }[user]

    def acl_file(self) -> str:
        """The ACL file every redis-server of the fleet loads (``--aclfile``)."""
        lines = [DEFAULT_USER]
        lines += [
            f"user {user} on >{self.password(user)} {rule}"
            for user, rule in RULES.items()
            if self.password(user)
        ]
        return "\n".join(lines) + "\n"

    def url(self, user: str, host: str, port: int) -> str:
        return f"redis://{user}:{self.password(user)}@{host}:{port}/0"
