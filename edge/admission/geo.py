"""Client IP and location (I/O adapter over geoip2): trusted X-Forwarded-For, .mmdb lookups with a cache."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import geoip2.database
import geoip2.errors
import maxminddb

from edge.peers import IPAddress, IPNetwork, is_trusted, parse_address
from fleet.state import Location


class GeoDatabaseError(RuntimeError):
    """The configured .mmdb is missing, corrupt or not a City database."""


log = logging.getLogger("meridian.geo")


@dataclass(frozen=True, slots=True)
class ClientPlace:
    """Where a client is, and how we know."""

    location: Location
    country: str | None
    continent: str | None
    source: str  # "geoip" | "edge-default"


def client_ip(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]
) -> IPAddress | None:
    """The peer, or the right-most untrusted X-Forwarded-For hop when the peer is a trusted proxy.

    Walking right to left, every hop that is itself a trusted proxy is skipped; the first untrusted hop is
    the client. A malformed hop stops the walk: the last address we could verify is used instead.
    """
    addr = parse_address(peer) if peer else None
    if addr is None or not is_trusted(addr, trusted) or not forwarded_for:
        return addr
    hops = [h for header in forwarded_for for h in header.split(",")]
    for hop in reversed(hops):
        parsed = parse_address(hop)
        if parsed is None:
            return addr
        addr = parsed
        if not is_trusted(parsed, trusted):
            return parsed
    return addr


def is_public(addr: IPAddress) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global


CITY_LIKE = ("City", "Enterprise")  # databases whose records carry a location
WARN_AFTER = 100  # lookups before the share of unreadable records is judged
WARN_SHARE = 0.1


class GeoLocator:
    """Looks clients up in a City .mmdb; private, unknown or unlocatable clients get the fallback place."""

    def __init__(
        self,
        db_path: Path | None,
        *,
        fallback: Location,
        cache_size: int = 65536,
        on_result: Callable[[str], None] = lambda result: None,
    ) -> None:
        self.fallback = ClientPlace(location=fallback, country=None, continent=None, source="edge-default")
        self._reader: geoip2.database.Reader | None = None
        if db_path is not None:
            self._reader = open_reader(db_path)
            self._method = (
                self._reader.enterprise
                if "Enterprise" in self._reader.metadata().database_type
                else (self._reader.city)
            )
        self.lookup = lru_cache(maxsize=cache_size)(self._lookup)
        self._on_result = on_result
        self.results: dict[str, int] = {}
        self._warned = False

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def locate(self, addr: IPAddress | None) -> ClientPlace:
        if addr is None or self._reader is None or not is_public(addr):
            return self.fallback
        return self.lookup(addr)

    def _lookup(self, addr: IPAddress) -> ClientPlace:
        """One database lookup (memoised). A record the database cannot give a usable location for is an
        unknown place (the edge's own), counted by result, never an error for the client."""
        assert self._reader is not None
        try:
            rec = self._method(addr)
        except geoip2.errors.AddressNotFoundError:
            return self._counted("not_found")
        except (ValueError, TypeError, KeyError, AttributeError, maxminddb.InvalidDatabaseError) as exc:
            return self._counted("error", addr, exc)
        lat, lon = rec.location.latitude, rec.location.longitude
        if lat is None or lon is None:
            return self._counted("no_location")
        try:
            place = ClientPlace(
                location=Location(lat=lat, lon=lon),
                country=rec.country.iso_code,
                continent=rec.continent.code,
                source="geoip",
            )
        except (ValueError, TypeError) as exc:  # out of range, NaN, not a number
            return self._counted("bad_record", addr, exc)
        self._count("hit")
        return place

    def _counted(
        self, result: str, addr: IPAddress | None = None, exc: BaseException | None = None
    ) -> ClientPlace:
        self._count(result)
        if exc is not None:  # once per address: the lookup is memoised
            log.warning(
                "GeoIP record for %s is unusable (%s): %s", addr, result, str(exc).splitlines()[0][:160]
            )
        return self.fallback

    def _count(self, result: str) -> None:
        self.results[result] = self.results.get(result, 0) + 1
        self._on_result(result)
        total = sum(self.results.values())
        bad = self.results.get("error", 0) + self.results.get("bad_record", 0)
        if not self._warned and total >= WARN_AFTER and bad / total > WARN_SHARE:
            self._warned = True
            log.warning("%d of %d GeoIP lookups failed: is the database corrupt?", bad, total)


class ClientLocator:
    """Who and where a request's client is: ``client_ip`` (as text, what the upstream headers and the
    explainer carry) then ``GeoLocator.locate``, cached by what the request carried (peer address and
    X-Forwarded-For text: hashing strings is cheaper than parsing addresses, ~10 µs each, matching them
    against networks, and writing them back out, ~1 µs, on every request)."""

    MAX_KEY_TEXT = 256  # longer X-Forwarded-For chains are resolved uncached

    def __init__(self, geo: GeoLocator, trusted: Sequence[IPNetwork], *, cache_size: int = 65536) -> None:
        self.geo = geo
        self.trusted = tuple(trusted)
        self._cached = lru_cache(maxsize=cache_size)(self._resolve)

    def resolve(self, peer: str | None, forwarded_for: Sequence[str]) -> tuple[str | None, ClientPlace]:
        if not forwarded_for:
            return self._cached(peer, ())
        hops = tuple(forwarded_for)
        if sum(map(len, hops)) > self.MAX_KEY_TEXT:
            return self._resolve(peer, hops)
        return self._cached(peer, hops)

    def _resolve(self, peer: str | None, forwarded_for: tuple[str, ...]) -> tuple[str | None, ClientPlace]:
        ip = client_ip(peer, forwarded_for, self.trusted)
        return (None if ip is None else str(ip)), self.geo.locate(ip)


def open_reader(path: Path) -> geoip2.database.Reader:
    """Open and sanity-check a City database; raise GeoDatabaseError naming the file."""
    try:
        reader = geoip2.database.Reader(str(path))
    except FileNotFoundError:
        raise GeoDatabaseError(f"GeoIP database {path} does not exist (setting MERIDIAN_GEOIP_DB)") from None
    except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
        raise GeoDatabaseError(f"GeoIP database {path} is not a valid .mmdb file: {exc}") from None
    db_type = reader.metadata().database_type
    if not any(kind in db_type for kind in CITY_LIKE):
        reader.close()
        raise GeoDatabaseError(
            f"GeoIP database {path} is a {db_type!r} database; a City database (or Enterprise, a superset "
            "of City) is needed"
        )
    return reader
