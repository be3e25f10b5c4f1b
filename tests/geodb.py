"""Build small GeoIP2-City .mmdb files with mmdb-writer for tests (real files, real geoip2 reads)."""

from __future__ import annotations

from pathlib import Path

from mmdb_writer import MmdbF64, MMDBWriter
from netaddr import IPSet

# name -> (networks, country, continent, lat, lon)
PLACES: dict[str, tuple[list[str], str, str, float, float]] = {
    "london": (["81.2.69.0/24", "2a00:1450:4009::/48"], "GB", "EU", 51.5142, -0.0931),
    "new_york": (["12.0.0.0/16"], "US", "NA", 40.7128, -74.0060),
    "california": (["13.56.0.0/16"], "US", "NA", 37.3388, -121.8914),
    "singapore": (["202.166.0.0/16", "2406:3003::/32"], "SG", "AS", 1.2931, 103.8558),
    "frankfurt": (["46.4.0.0/16"], "DE", "EU", 50.1109, 8.6821),
    "sao_paulo": (["200.147.0.0/16"], "BR", "SA", -23.5505, -46.6333),
    "sydney": (["1.128.0.0/16"], "AU", "OC", -33.8688, 151.2093),
    "johannesburg": (["41.0.0.0/16"], "ZA", "AF", -26.2041, 28.0473),
}

CLIENT_IP = {
    "london": "81.2.69.142",
    "london_v6": "2a00:1450:4009::1",
    "new_york": "12.0.1.1",
    "california": "13.56.0.1",
    "singapore": "202.166.0.1",
    "singapore_v6": "2406:3003::1",
    "frankfurt": "46.4.0.1",
    "sao_paulo": "200.147.0.1",
    "sydney": "1.128.0.1",
    "johannesburg": "41.0.0.1",
    "unknown_public": "8.8.8.8",
}


def build_city_db(path: Path) -> Path:
    w = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoIP2-City",
        languages=["en"],
        description="Meridian test City database",
    )
    for name, (nets, country, continent, lat, lon) in PLACES.items():
        w.insert_network(
            IPSet(nets),
            {
                "city": {"names": {"en": name}},
                "country": {"iso_code": country, "names": {"en": country}},
                "continent": {"code": continent, "names": {"en": continent}},
                "location": {"latitude": MmdbF64(lat), "longitude": MmdbF64(lon)},
            },
        )
    w.to_db_file(str(path))
    return path
