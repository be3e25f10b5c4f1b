"""Whether a request may go, and on what terms (I/O only through the limiter): the caller's API key, its
priority (asked for and capped by its tenant), its body read within the limits, its model checked against
the catalog and the tenant's models, and the tenant's rate and concurrency limits; every refusal in
OpenAI's shape. What is admitted carries its tenant, token reservation and slot until the request ends."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.http import HttpVersion11

from edge.admission.budgets import Budgets, Exhausted, Hold
from edge.admission.limiter import Limiter, Ticket, Verdict
from edge.admission.limits import prompt_tokens, reservation
from edge.admission.request import BodyError, Inference, read
from edge.admission.tenants import Principal, Standing, TenantsFeed
from edge.errors import BadInput, error, unknown_model
from edge.routing.planner import NOTHING, Wanted, wanted_of
from edge.settings import EdgeSettings
from edge.telemetry.metrics import EdgeMetrics
from edge.telemetry.usage import Tally
from fleet.models import Catalog, usd
from fleet.tenants import PRIORITIES, Priority, Tenant

_PRIORITY: dict[str, Priority] = {p: p for p in PRIORITIES}  # a header's value -> the priority

ANONYMOUS = "-"  # the tenant of every request when authentication is off


@dataclass(slots=True)
class Admitted:
    """A request let in: what it asks for, whose it is, and what it holds until it ends."""

    priority: Priority
    body: bytes
    wanted: Wanted
    model: str | None  # as the client named it (accounting; the open world routes on no model)
    cost: int  # its token estimate: prompt plus what it may generate
    tenant: Tenant | None = None
    headers: dict[str, str] | None = None  # the tenant's x-ratelimit-* headers
    reserved: int = 0  # tokens reserved against the tenant's TPM (settled when the answer ends)
    ticket: Ticket | None = None  # its concurrent slot
    tally: Tally | None = None  # counts the answer's tokens
    standing: Standing | None = None  # whether its key still holds while it streams
    hold: Hold | None = None  # its reservation of the tenant's spend budget (settled when it ends)
    spend_nusd: int = 0  # what its answer cost at the catalog's prices (set once, when it is accounted)

    @property
    def tenant_id(self) -> str:
        return ANONYMOUS if self.tenant is None else self.tenant.id

    def prompt_estimate(self) -> int:
        """The prompt's tokens at ~4 characters a token (what a stream without ``usage`` is charged)."""
        return prompt_tokens(len(self.body))


EXPIRED_CHALLENGE = 'Bearer realm="meridian", error="invalid_token", error_description="the key expired"'


class Admission:
    def __init__(
        self,
        *,
        settings: EdgeSettings,
        catalog: Catalog,
        tenants: TenantsFeed | None,
        limiter: Limiter | None,
        metrics: EdgeMetrics,
        accounting: bool,
        budgets: Budgets | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.tenants = tenants  # None: authentication off
        self.limiter = limiter
        self.budgets = budgets  # None: no Redis primary to keep budgets on (authentication off)
        self.metrics = metrics
        self.accounting = accounting  # count every answer's tokens (usage ledger), not only limited ones
        self.edge_headers = {"X-Meridian-Edge": settings.region}

    def authenticate(self, request: web.BaseRequest) -> Principal | None:
        """The caller's tenant from ``Authorization: Bearer <key>`` (None: missing, unknown or revoked)."""
        assert self.tenants is not None
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        return self.tenants.resolve(presented.strip())

    def unauthorized(self) -> web.Response:
        self.metrics.bad_input.labels(what="api_key").inc()
        return error(
            401,
            "Incorrect or missing API key: send Authorization: Bearer <key> (keys are issued per tenant by "
            "the operators)",
            kind="invalid_request_error",
            code="invalid_api_key",
            headers={**self.edge_headers, "WWW-Authenticate": 'Bearer realm="meridian"'},
        )

    def expired(self, at: float) -> web.Response:
        """401: the key's ``expires_at`` has passed."""
        self.metrics.bad_input.labels(what="api_key").inc()
        when = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
        return error(
            401,
            f"This API key expired at {when}: ask the operators for a new one",
            kind="invalid_request_error",
            code="expired_api_key",
            headers={
                **self.edge_headers,
                "WWW-Authenticate": 'Bearer realm="meridian", error="invalid_token"',
            },
        )

    def keys_loading(self) -> web.Response:
        """503: this edge has not read its key set yet (starting while its stores are slow or away)."""
        self.metrics.keys_stale.inc()
        return error(
            503,
            "this edge has not loaded its API keys yet (starting): retry, another edge may serve",
            kind="overloaded_error",
            code="api_keys_loading",
            headers={**self.edge_headers, "Retry-After": "1"},
        )

    def keys_stale(self, age_s: float) -> web.Response:
        """503: the key set could not be confirmed for longer than the bound (fail closed)."""
        self.metrics.keys_stale.inc()
        bound = self.settings.tenants_max_age_s
        return error(
            503,
            f"this edge could not confirm API keys for {age_s:.0f} s (more than {bound:g} s, setting "
            "MERIDIAN_TENANTS_MAX_AGE_S): it admits no request until it can; retry, another edge may serve",
            kind="overloaded_error",
            code="api_keys_stale",
            headers={**self.edge_headers, "Retry-After": "5"},
        )

    async def admit(self, request: web.BaseRequest, principal: Principal | None) -> Admitted | web.Response:
        """The request's terms, or the refusal to answer with."""
        try:
            priority = self._priority(request, principal)
            body = await self._body(request)
            wanted, facts = self._wanted(request, body, principal)
        except BadInput as exc:
            return self._bad_input(exc)
        if facts is None:  # not an inference (GET /v1/models): one token, no answer to count
            admitted = Admitted(priority, body, wanted, None, 1)
        else:
            cost = reservation(
                prompt_chars=len(body),
                max_tokens=facts.max_tokens,
                context_length=self.catalog.context_length(facts.model),
                cap=self.settings.default_max_tokens,
            )
            admitted = Admitted(priority, body, wanted, facts.model, cost)
            if self.accounting or (principal is not None and principal.tenant.budget is not None):
                admitted.tally = Tally()
        if principal is None:
            return admitted
        tenant = admitted.tenant = principal.tenant
        assert self.tenants is not None
        admitted.standing = Standing(self.tenants, principal.key_id, self.tenants.generation)
        limits, limiter = tenant.limits, self.limiter
        if limiter is None:
            return admitted
        if limits.rpm is not None or limits.tpm is not None:
            verdict = limiter.admit_held(tenant, admitted.cost) or await limiter.admit(tenant, admitted.cost)
            if not verdict.admitted:
                return self.rate_limited(tenant, verdict)
            admitted.headers = verdict.headers
            if limits.tpm is not None:
                admitted.reserved = admitted.cost
        if limits.max_concurrent is not None:
            refused, admitted.ticket = await limiter.enter(tenant)
            if refused is not None:
                self.release(admitted)
                return self.rate_limited(tenant, refused)
        if tenant.budget is not None and self.budgets is not None and facts is not None:
            prompt = admitted.prompt_estimate()
            most = self.catalog.cost_nusd(facts.model, prompt, cost - prompt)  # all it may generate
            held = await self.budgets.reserve(tenant, most)
            if isinstance(held, Exhausted):
                self.release(admitted)
                return self.over_budget(tenant, held)
            admitted.hold = held
        return admitted

    def release(self, admitted: Admitted, used: tuple[int, int] | None = None) -> None:
        """The request ended: its slot back, its token reservation settled against ``used`` (prompt and
        completion tokens; None: it pays the reservation), its budget reservation against their cost."""
        limiter = self.limiter
        if limiter is None or admitted.tenant is None:
            return
        if admitted.ticket is not None:
            limiter.leave(admitted.ticket)
            admitted.ticket = None
        if admitted.reserved and used is not None:
            limiter.settle(admitted.tenant, admitted.reserved, sum(used))
        admitted.reserved = 0
        hold = admitted.hold
        if hold is not None and self.budgets is not None:
            admitted.hold = None
            self.budgets.settle(hold, hold.reserved if used is None else admitted.spend_nusd)

    def over_budget(self, tenant: Tenant, exhausted: Exhausted) -> web.Response:
        self.metrics.child(self.metrics.rate_limited, "budget").inc()
        self.metrics.tenants.outcome(tenant.id, "over_budget")
        assert tenant.budget is not None
        wait = max(1, math.ceil(exhausted.until - time.time()))
        return error(
            429,
            f"Tenant {tenant.id} has reached its budget of ${tenant.budget.usd:g} a {tenant.budget.period} "
            f"(spent ${usd(exhausted.spent_nusd):.4f}, ${usd(exhausted.held_nusd):.4f} held by requests in "
            f"flight); it renews in {wait} s",
            kind="insufficient_quota",
            code="budget_exceeded",
            headers={**self.edge_headers, "Retry-After": str(wait)},
        )

    def rate_limited(self, tenant: Tenant, verdict: Verdict) -> web.Response:
        limit = verdict.refused or "requests"
        self.metrics.child(self.metrics.rate_limited, limit).inc()
        self.metrics.tenants.outcome(tenant.id, "rate_limited")
        what = "concurrent requests" if limit == "concurrent" else f"{limit} per minute"
        return error(
            429,
            f"Rate limit reached for tenant {tenant.id} on {what}; retry after {verdict.retry_after_s:.2f} s",
            kind=limit,
            code="rate_limit_exceeded",
            headers={
                **self.edge_headers,
                **verdict.headers,
                "Retry-After": str(max(1, math.ceil(verdict.retry_after_s))),
            },
        )

    def _bad_input(self, exc: BadInput) -> web.Response:
        self.metrics.bad_input.labels(what=exc.what).inc()
        kind = "invalid_request_error" if exc.code else "meridian_bad_input"
        refused = error(
            exc.status, str(exc), kind=kind, headers=self.edge_headers, code=exc.code, param=exc.param
        )
        if exc.status in (408, 413):  # the client may still be sending: do not read on
            refused.force_close()
        return refused

    def _wanted(
        self, request: web.BaseRequest, body: bytes, principal: Principal | None
    ) -> tuple[Wanted, Inference | None]:
        """The model, affinity key and adapter of an inference body; the model checked against the catalog
        and the tenant's models (else 404 ``model_not_found``, as OpenAI answers it)."""
        if request.method != "POST":
            return NOTHING, None
        try:
            facts = read(body, request.headers.get("X-Session-Id"))
        except BodyError as exc:
            raise BadInput(400, str(exc), "body", code="invalid_body", param=exc.param) from None
        catalog, model = self.catalog, facts.model
        context = catalog.context_length(model)
        if context is not None and facts.max_tokens is not None and facts.max_tokens > context:
            raise BadInput(
                400,
                f"max_tokens {facts.max_tokens} exceeds {model}'s context length of {context} tokens",
                "max_tokens",
                code="invalid_value",
                param="max_tokens",
            )
        if model is not None and (
            (principal is not None and not principal.tenant.may_use(model)) or not catalog.known(model)
        ):
            self.metrics.model_not_found.inc()
            raise unknown_model(model)
        if model is None and not catalog.open:
            raise BadInput(400, "the request names no model", "model", code="missing_model", param="model")
        return wanted_of(catalog, model, facts.key), facts

    def _priority(self, request: web.BaseRequest, principal: Principal | None) -> Priority:
        """The request's priority: the header's, capped by what its tenant may use (default: the tenant's)."""
        raw = request.headers.get("X-Meridian-Priority")
        asked = None if raw is None else _PRIORITY.get(raw.strip().lower())
        if raw is not None and asked is None:
            raise BadInput(
                400, f"header X-Meridian-Priority must be one of {', '.join(PRIORITIES)}", "priority"
            )
        if principal is not None:
            return principal.tenant.priority_for(asked)
        return asked or "normal"

    async def _body(self, request: web.BaseRequest) -> bytes:
        """The request body, within the limit; ``Expect: 100-continue`` answered first (a router's job, had
        we one)."""
        expect = request.headers.get("Expect")
        if expect is not None and request.version >= HttpVersion11:
            if expect.lower() != "100-continue":
                raise BadInput(
                    417, f"header Expect: {expect[:64]!r} is not supported (only 100-continue)", "expect"
                )
            if (request.content_length or 0) > self.settings.max_body_bytes:  # refuse before it is sent
                raise BadInput(413, self._too_large(), "body_too_large")
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # aiohttp's count: the interim response is not the response
        try:
            if request.content.is_eof():  # the whole body came with the headers: no timer needed
                return await request.read()
            async with asyncio.timeout(self.settings.body_timeout_s):
                return await request.read()
        except TimeoutError:
            raise BadInput(
                408,
                f"the request body did not arrive within {self.settings.body_timeout_s:g} s "
                "(setting MERIDIAN_BODY_TIMEOUT_S)",
                "body_timeout",
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise BadInput(413, self._too_large(), "body_too_large") from None

    def _too_large(self) -> str:
        limit = self.settings.max_body_bytes
        return f"request body exceeds the limit of {limit} bytes (setting MERIDIAN_MAX_BODY_BYTES)"
