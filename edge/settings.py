"""Edge settings (pydantic-settings, MERIDIAN_ prefix, optional .env); no I/O beyond reading env."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

READINESS_PATH = "/readyz"
DEFAULT_PORT = 8080


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MERIDIAN_", env_file=".env", extra="ignore")

    region: str = Field(description="the region this edge runs in (a name from regions.yaml)")
    regions_file: Path = Path("regions.yaml")
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="this region's Redis replica (read)"
    )
    redis_primary_url: str | None = Field(
        default=None, description="the Redis primary, for observations (best effort); none disables reporting"
    )
    host: str = "0.0.0.0"
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64, description="processes sharing the port via SO_REUSEPORT")
    geoip_db: Path | None = Field(default=None, description="a GeoIP2/GeoLite2 City .mmdb file")
    trusted_proxies: Annotated[list[IPNetwork], NoDecode] = Field(
        default_factory=list, description="CIDRs whose X-Forwarded-For is believed (comma-separated)"
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="request bodies above this get 413")
    resync_interval_s: float = Field(default=5.0, gt=0, le=300)
    observation_interval_s: float = Field(default=1.0, gt=0, le=300)
    connect_timeout_s: float = Field(default=1.0, gt=0)
    ttfb_timeout_s: float = Field(default=30.0, gt=0, description="time to response headers")
    idle_timeout_s: float = Field(default=60.0, gt=0, description="max gap between stream chunks")
    total_timeout_s: float = Field(default=600.0, gt=0)
    pool_size: int = Field(default=256, ge=1, description="keep-alive connections to regions, total")
    tracing_exporter: Literal["none", "console", "otlp"] = "none"
    tracing_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    service_name: str = "meridian-edge"
    log_level: str = "INFO"

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v
