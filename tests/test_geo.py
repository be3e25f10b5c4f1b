"""Client IP from peer + X-Forwarded-For, and .mmdb lookups (real files built with mmdb-writer)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from edge.admission.geo import ClientLocator, GeoDatabaseError, GeoLocator, client_ip, open_reader
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
        assert ip == expected  # the address as text
        assert place == clients.geo.locate(client_ip(peer, xff, TRUSTED))
    long_chain = ["10.0.0.1, " * 40 + "81.2.69.142"]  # over the cache's key bound: resolved uncached
    ip, place = clients.resolve("127.0.0.1", long_chain)
    assert ip == "81.2.69.142" and place.country == "GB"
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


def _db(path: Path, records: dict[str, dict[str, object]], *, database_type: str = "GeoIP2-City") -> Path:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=database_type, languages=["en"])
    for net, record in records.items():
        w.insert_network(IPSet([net]), record)
    w.to_db_file(str(path))
    return path


def test_unusable_records_are_an_unknown_place_counted_by_result(tmp_path: Path) -> None:
    from mmdb_writer import MmdbF64

    good = {"country": {"iso_code": "GB"}, "continent": {"code": "EU"}}
    db = _db(
        tmp_path / "bad.mmdb",
        {
            "81.2.69.0/24": {**good, "location": {"latitude": MmdbF64(51.5), "longitude": MmdbF64(-0.1)}},
            "1.1.1.0/24": {**good, "location": {"latitude": MmdbF64(200.0), "longitude": MmdbF64(0.0)}},
            "1.1.2.0/24": {
                **good,
                "location": {"latitude": MmdbF64(float("nan")), "longitude": MmdbF64(0.0)},
            },
            "1.1.3.0/24": {**good, "location": {"latitude": "north", "longitude": MmdbF64(0.0)}},
            "1.1.4.0/24": {**good, "location": "nowhere"},
        },
    )
    home = Location(lat=1.0, lon=2.0)
    seen: list[str] = []
    geo = GeoLocator(db, fallback=home, on_result=seen.append)
    try:
        assert geo.locate(ipaddress.ip_address("81.2.69.1")).source == "geoip"
        for ip in ("1.1.1.1", "1.1.2.1", "1.1.3.1", "1.1.4.1"):
            assert geo.locate(ipaddress.ip_address(ip)) == geo.fallback, ip  # no exception, the edge's place
        assert seen[0] == "hit" and len(seen) == 5
        assert set(seen[1:]) <= {"bad_record", "error"}
    finally:
        geo.close()


def test_an_enterprise_database_is_a_city_superset_and_accepted(tmp_path: Path) -> None:
    from mmdb_writer import MmdbF64

    record = {
        "country": {"iso_code": "SG"},
        "continent": {"code": "AS"},
        "location": {"latitude": MmdbF64(1.29), "longitude": MmdbF64(103.85)},
    }
    db = _db(tmp_path / "ent.mmdb", {"202.166.0.0/16": record}, database_type="GeoIP2-Enterprise")
    geo = GeoLocator(db, fallback=Location(lat=0.0, lon=0.0))
    try:
        place = geo.locate(ipaddress.ip_address("202.166.0.1"))
        assert place.country == "SG" and place.source == "geoip"
    finally:
        geo.close()
