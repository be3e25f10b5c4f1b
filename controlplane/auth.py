"""Who is calling the admin API (I/O-free request checks): bearer tokens resolved to a user with a role,
compared in constant time; the guards: only operators write, the pools role (KEDA, node agents) reads
pools and posts interruptions and nothing else."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from controlplane.settings import AdminToken


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str


class TokenAuth(AbstractAuthenticationMiddleware):
    """Resolve `Authorization: Bearer <token>` to a User; tokens are compared in constant time."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise NotAuthorizedException("missing bearer token (Authorization: Bearer <token>)")
        tokens: list[AdminToken] = connection.app.state.tokens
        given = presented.strip().encode()
        match: AdminToken | None = None
        for t in tokens:  # no early exit: time does not depend on which token matched
            if hmac.compare_digest(given, t.token.get_secret_value().encode()):
                match = t
        if match is None:
            raise NotAuthorizedException("invalid bearer token")
        return AuthenticationResult(user=User(name=match.name, role=match.role), auth=match.role)


def staff_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Regions, tenants, keys, usage and the audit: people (viewers and operators), not the pools role.
    (A controller's guard also runs on its CORS preflight, which carries no token and reads nothing.)"""
    if connection.scope.get("method") == "OPTIONS":
        return
    if connection.user.role not in ("viewer", "operator"):
        raise PermissionDeniedException(
            f"role '{connection.user.role}' may read pools and post interruptions only"
        )


def actuator_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Interruption notices: operators, and node agents holding a pools token."""
    if connection.user.role not in ("operator", "pools"):
        raise PermissionDeniedException(
            f"role '{connection.user.role}' may not post interruptions; needs 'operator' or 'pools'"
        )


def operator_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if connection.user.role != "operator":
        raise PermissionDeniedException(
            f"role '{connection.user.role}' may not change this; needs 'operator'"
        )
