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

    def response(self, headers: dict[str, str] | None = None) -> web.Response:
        return error(
            self.status,
            str(self),
            kind="invalid_request_error",
            headers=headers,
            code=self.code,
            param=self.param,
        )


def unknown_model(model: str) -> BadInput:
    """A model the catalog lacks or the tenant may not use: 404 ``model_not_found``, as OpenAI answers it."""
    return BadInput(
        404,
        f"The model `{model[:200]}` does not exist or you do not have access to it.",
        "model",
        code="model_not_found",
        param="model",
    )
