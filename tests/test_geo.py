"""Client IP from peer + X-Forwarded-For, and .mmdb lookups (real files built with mmdb-writer)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from edge.geo import ClientLocator, GeoDatabaseError, GeoLocator, client_ip, open_reader
from fleet.state import Location

TRUSTED = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8")]


CASES: list[tuple[str | None, list[str], str | None]] = [
    ("203.0.113.9", ["81.2.69.142"], "203.0.113.9"),  # untrusted peer: header ignored
    ("127.0.0.1", ["81.2.69.142"], "81.2.69.142"),
    ("127.0.0.1", ["6.6.6.6, 81.2.69.142, 10.1.1.1"], "81.2.69.142"),  # right-most untrusted hop
    ("127.0.0.1", ["6.6.6.6", "81.2.69.142"], "81.2.69.142"),  # several headers
    ("127.0.0.1", ["garbage, 81.2.69.142"], "81.2.69.142"),
    (
        "127.0.0.1",
        ["81.2.69.142, garbage"],
        "127.0.0.1",
    ),  # malformed nearest hop: stop at what we verified
    ("127.0.0.1", ["2a00:1450:4009::1"], "2a00:1450:4009::1"),
    ("127.0.0.1", ["[2a00:1450:4009::1]:443"], "2a00:1450:4009::1"),
    ("127.0.0.1", ["81.2.69.142:5555"], "81.2.69.142"),
    ("127.0.0.1", [], "127.0.0.1"),
    ("127.0.0.1", ["10.2.2.2"], "10.2.2.2"),  # all hops trusted: the left-most
    (None, ["81.2.69.142"], None),
]


@pytest.mark.parametrize(("peer", "xff", "expected"), CASES)
def test_client_ip(peer: str | None, xff: list[str], expected: str | None) -> None:
    got = client_ip(peer, xff, TRUSTED)
    assert (str(got) if got else None) == expected


@pytest.mark.parametrize(("peer", "xff", "expected"), CASES)
def test_client_locator_matches_client_ip_and_geo(
    geo_db: Path, peer: str | None, xff: list[str], expected: str | None
) -> None:
    home = Location(lat=1.0, lon=2.0)
    clients = ClientLocator(GeoLocator(geo_db, fallback=home), TRUSTED)
    for _ in range(2):  # computed, then from the cache
        ip, place = clients.resolve(peer, xff)
        assert (str(ip) if ip else None) == expected
        assert place == clients.geo.locate(ip)
    long_chain = ["10.0.0.1, " * 40 + "81.2.69.142"]  # over the cache's key bound: resolved uncached
    ip, place = clients.resolve("127.0.0.1", long_chain)
    assert str(ip) == "81.2.69.142" and place.country == "GB"
    clients.geo.close()


def test_locator_uses_the_database_and_falls_back(geo_db: Path) -> None:
    home = Location(lat=1.0, lon=2.0)
    geo = GeoLocator(geo_db, fallback=home)
    place = geo.locate(ipaddress.ip_address("81.2.69.142"))
    assert (place.country, place.continent, place.source) == ("GB", "EU", "geoip")
    assert geo.locate(ipaddress.ip_address("2406:3003::5")).country == "SG"
    for ip in ("10.0.0.1", "192.168.1.1", "8.8.8.8", "::1", "fe80::1"):
        p = geo.locate(ipaddress.ip_address(ip))
        assert p.source == "edge-default" and p.location == home
    geo.close()


def test_corrupt_or_wrong_database_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.mmdb"
    bad.write_bytes(b"this is not a maxmind database" * 100)
    with pytest.raises(GeoDatabaseError, match=r"corrupt\.mmdb is not a valid \.mmdb"):
        open_reader(bad)
    with pytest.raises(GeoDatabaseError, match="does not exist"):
        open_reader(tmp_path / "missing.mmdb")
