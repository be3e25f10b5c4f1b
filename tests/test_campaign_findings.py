"""Bugs the fault campaign found, each fixed and kept fixed by a test named after the campaign's seed
(`meridian chaos --seed N` reproduces the campaign that found it)."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from controlplane.intake import PassiveBook
from controlplane.prober import Prober
from controlplane.service import ServiceTracker
from regionsim.model import Power
from tests.fleet import ServerFactory, start_fleet, wait_for

REGION = "eu-west-1"


async def test_seed_2_a_restarted_control_plane_keeps_a_switched_off_replica_down(
    tmp_path: Path, serve: ServerFactory, geo_db: Path
) -> None:
    """Seed 2 (`meridian chaos --seed 2 --steps 14 --duration 90 --rate 8`): after a control-plane restart,
    requests got 503 "replica is not serving (switched off or starting)": the new prober started every
    replica "up" and wrote it before the two failed probes that take a replica down, so edges sent requests
    to machines the autoscaler had switched off. A prober now starts from the store's view."""
    f = await start_fleet(tmp_path, serve, geo_db=geo_db, regions=(REGION,))
    try:
        off = sorted(f.sims[REGION])[0]
        f.sim(REGION, off).power = Power(on=False)  # as the autoscaler leaves a slot it switched off

        async def down() -> bool:
            _, region = await f.admin("GET", f"/v1/regions/{REGION}")
            return bool(region["replicas"][off] == "down")

        await wait_for(down, timeout=10, what="the switched-off replica down in the store")
        old = f.admin_app.state.prober
        restarted = Prober(  # what a restarted control plane runs: the same settings, a fresh memory
            settings=old.settings,
            topology=old.topology,
            store=old.store,
            book=PassiveBook(rise=old.settings.probe_rise, fall=old.settings.probe_fall),
            service=ServiceTracker(),
        )
        async with aiohttp.ClientSession() as session:
            await restarted.round(session)  # its first round: one probe of the replica, which refuses
        _, region = await f.admin("GET", f"/v1/regions/{REGION}")
        assert region["replicas"][off] == "down", region
        assert restarted.tracks[(REGION, off)].health == "down"
    finally:
        await f.close()
