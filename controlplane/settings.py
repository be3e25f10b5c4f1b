"""Control-plane settings (pydantic-settings, MERIDIAN_ prefix, optional .env); no I/O beyond reading env."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypedDict

from pydantic import BaseModel, Field, FilePath, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet.redisconn import RedisURL
from fleet.secret import Secret
from fleet.topology import LogLevel

# viewer: reads everything; operator: also writes; pools: KEDA and node agents — reads pools and posts
# interruption notices, nothing else
Role = Literal["viewer", "operator", "pools"]


class UvicornTLS(TypedDict, total=False):
    """The keyword arguments uvicorn takes for TLS (none: plain HTTP)."""

    ssl_certfile: str
    ssl_keyfile: str


class AdminToken(BaseModel):
    """One bearer token: who holds it and what it may do."""

    name: str = Field(min_length=1)
    role: Role
    token: Secret


class ControlPlaneSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MERIDIAN_", env_file=".env", extra="ignore", use_attribute_docstrings=True
    )

    regions_file: Path = Path("regions.yaml")
    """the topology file"""
    redis_url: RedisURL = Field(default="redis://127.0.0.1:6379/0", description="the Redis primary")
    redis_username: str | None = Field(default=None, description="ACL user, when the URL carries none")
    redis_password: SecretStr | None = Field(default=None, description="its password (never logged)")
    host: str = "127.0.0.1"
    """the admin API's address"""
    port: int = Field(default=8700, ge=1, le=65535)
    """the admin API's port"""
    admin_tokens: list[AdminToken] = Field(
        default_factory=list,
        description='JSON list: [{"name": "alice", "role": "operator", "token": "..."}]',
    )
    key_secret: Secret | None = Field(
        default=None,
        description="HMAC secret for API-key digests; the same on every edge (unset: no key can be issued)",
    )
    probe_interval_s: float = Field(default=2.0, ge=0.5, le=300)
    """health-probe every replica this often"""
    probe_timeout_s: float = Field(default=1.0, gt=0, le=60)
    """a probe slower than this failed"""
    probe_path: str = "/health"
    """the health path probed (vLLM, SGLang, TGI: /health; engine openai: GET /v1/models instead)"""
    probe_rise: int = Field(default=2, ge=1, le=20)
    """consecutive good probes before a replica's health improves"""
    probe_fall: int = Field(default=2, ge=1, le=20)
    """consecutive bad probes before it worsens"""
    probe_enabled: bool = True
    """probe at all (off: health only from the edges' observations)"""
    autoscaler: Literal["off", "simulator", "kubernetes"] = Field(
        default="off",
        description="regions.yaml's pools: off; simulator (switch the simulator's replica slots on and off); "
        "kubernetes (decide and publish; KEDA scales the Deployments)",
    )
    spot_notices: bool = True
    """act on spot interruption notices (drain and replace at once); off only to measure what they buy"""
    signals_interval_s: float = Field(
        default=1.0, ge=0.2, le=60, description="scrape every engine's metrics and publish its signals"
    )
    utilization_change: float = Field(
        default=0.05, ge=0, le=1, description="write utilization to the store only when it moves this much"
    )
    latency_change: float = Field(
        default=0.10, ge=0, le=10, description="write latency when the fleet EWMA moves by this fraction"
    )
    tls_cert_file: FilePath | None = Field(
        default=None,
        description="PEM certificate (chain) the admin API serves HTTPS with (with tls_key_file)",
    )
    tls_key_file: FilePath | None = Field(default=None, description="its PEM private key")
    log_level: LogLevel = "INFO"
    """the log level"""

    @model_validator(mode="after")
    def _tls_pair(self) -> ControlPlaneSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "MERIDIAN_TLS_CERT_FILE and MERIDIAN_TLS_KEY_FILE go together: set both or neither"
            )
        return self

    def uvicorn_tls(self) -> UvicornTLS:
        """uvicorn's TLS options (none: plain HTTP, for a TLS-terminating load balancer in front)."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return {}
        return {"ssl_certfile": str(self.tls_cert_file), "ssl_keyfile": str(self.tls_key_file)}
