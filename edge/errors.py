"""The edge's refusals in OpenAI's error shape (no I/O): one builder for every error a client sees, and the
exception that carries a refusal of the client's input out of the request's checks."""

from __future__ import annotations

import logging

from aiohttp import web

log = logging.getLogger("meridian.edge")


def error(
    status: int,
    message: str,
    *,
    kind: str,
    headers: dict[str, str] | None = None,
    code: str | None = None,
    param: str | None = None,
) -> web.Response:
    """An error for the client, in OpenAI's shape."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def internal_error(request: web.BaseRequest) -> web.Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error(500, "internal error in the edge", kind="meridian_internal")


class BadInput(Exception):
    """The client's request is refused before any region sees it (status, message, metric label, and
    OpenAI's code and param when there is one)."""

    def __init__(
        self, status: int, message: str, what: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.what = what
        self.code = code
        self.param = param
