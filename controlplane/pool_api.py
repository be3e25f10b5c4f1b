"""The admin API's autoscaled pools (Litestar handlers): every pool's replicas, desired count, capacity mix,
cost and last decision (viewers read; KEDA's metrics-api trigger reads one pool's ``desired``), and
interruption notices (operators, or a node agent with a pools token)."""

from __future__ import annotations

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.exceptions import ClientException, NotFoundException, ValidationException

from controlplane.auth import User, actuator_guard
from controlplane.autoscaler import Autoscaler, NotServing, OnDemand
from controlplane.schemas import (
    AUTHENTICATED,
    CONFLICT,
    ONE_POOL,
    WRITE_TENANT,
    Interruption,
    PoolList,
    PoolStatus,
)
from controlplane.store import StateStore
from fleet.pools import PoolKey


async def _statuses(state: State) -> dict[str, PoolStatus]:
    store: StateStore = state.store
    out = {}
    for k, v in (await store.pools()).items():
        try:
            out[k] = PoolStatus.model_validate(v)
        except ValueError:
            continue
    return out


class PoolController(Controller):
    path = "/v1/pools"
    tags = ["pools"]

    @get("/", summary="Every autoscaled pool", responses=AUTHENTICATED)
    async def list_pools(self, state: State) -> PoolList:
        return PoolList(pools=[v for _, v in sorted((await _statuses(state)).items())])

    @get("/{region:str}/{model:str}", summary="One pool (KEDA reads `desired`)", responses=ONE_POOL)
    async def get_pool(self, region: str, model: str, state: State) -> PoolStatus:
        found = (await _statuses(state)).get(f"{region}/{model}")
        if found is None:
            raise NotFoundException(f"no pool of {model!r} in {region!r}")
        return found

    @post(
        "/{region:str}/{model:str}/interruptions",
        guards=[actuator_guard],
        status_code=202,
        summary="A replica's machine goes away (spot notice): drain it now and replace it",
        responses={**ONE_POOL, 403: WRITE_TENANT[403], 409: CONFLICT, 422: WRITE_TENANT[422]},
    )
    async def interrupt(
        self, region: str, model: str, data: Interruption, request: Request[User, str, State], state: State
    ) -> PoolStatus:
        autoscaler: Autoscaler | None = state.get("autoscaler")
        pool = None if autoscaler is None else autoscaler.pools.get(PoolKey(region, model))
        if autoscaler is None or pool is None:
            raise NotFoundException(f"no autoscaled pool of {model!r} in {region!r}")
        if data.replica not in pool.slots:
            raise ValidationException(
                f"replica {data.replica!r} is not a slot of this pool ({', '.join(pool.slots)})",
                extra=[{"key": "replica", "source": "body"}],
            )
        try:
            await autoscaler.interrupt(
                region, data.replica, actor=request.user.name, reason=data.reason, force=data.force
            )
        except NotServing:
            raise ClientException(
                f"replica {data.replica!r} is not on: nothing to interrupt", status_code=409
            ) from None
        except OnDemand:
            raise ClientException(
                f"replica {data.replica!r} runs on demand: interruption notices are for spot machines "
                '(send "force": true to give an on-demand machine back)',
                status_code=409,
            ) from None
        return PoolStatus.model_validate(autoscaler.status(pool, autoscaler.clock()))
