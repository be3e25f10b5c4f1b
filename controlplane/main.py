"""Start the control plane process (I/O): read settings, build the admin app, serve it under uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from controlplane.api import create_app
from controlplane.settings import ControlPlaneSettings
from fleet.topology import TopologyError, check_environment, format_settings_error


def main() -> int:
    """Run the admin API and the health prober under uvicorn (settings from MERIDIAN_*)."""
    if (problem := check_environment()) is not None:
        print(f"meridian controlplane: {problem}", file=sys.stderr)
        return 2
    try:
        settings = ControlPlaneSettings()
    except (ValidationError, SettingsError) as exc:
        print(format_settings_error(exc, source="control-plane"), file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,  # already one of logging's names
        stream=sys.stderr,
        format="%(asctime)s controlplane %(levelname)s %(name)s: %(message)s",
    )
    if not settings.admin_tokens:
        print(
            "meridian controlplane: warning: MERIDIAN_ADMIN_TOKENS is empty; every admin call gets 401",
            file=sys.stderr,
        )
    try:
        app = create_app(settings)
    except TopologyError as exc:
        print(f"meridian controlplane: cannot start: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        loop="uvloop",
        access_log=False,
        timeout_graceful_shutdown=2,
        **settings.uvicorn_tls(),
    )
    return 0
