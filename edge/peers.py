"""Network addresses of peers (pure): an address read from text, and whether it lies in trusted networks —
the one rule for the proxies whose X-Forwarded-For is believed and the peers whose trace decision is."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(value: str) -> IPAddress | None:
    """An address from text, bare or with a port (``v4:port``, ``[v6]:port``); None when it is none."""
    v = value.strip()
    if v.startswith("[") and "]" in v:  # [v6]:port
        v = v[1 : v.index("]")]
    elif v.count(":") == 1 and "." in v:  # v4:port
        v = v.split(":", 1)[0]
    try:
        return ipaddress.ip_address(v)
    except ValueError:
        return None


def is_trusted(addr: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    """``addr`` (an IPv4-mapped IPv6 address as its IPv4 one) lies in one of ``trusted``."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in trusted)


def trusted_peer(peer: str | None, trusted: Sequence[IPNetwork]) -> bool:
    """The connection's peer address (as aiohttp gives it) lies in one of ``trusted``."""
    if not trusted or peer is None:
        return False
    addr = parse_address(peer)
    return addr is not None and is_trusted(addr, trusted)
