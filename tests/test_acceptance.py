"""Which store state an edge takes (``edge.routing.acceptance.judge``), as a table: never older, never
partial, an invalid record quarantined behind the edge's last good one."""

from __future__ import annotations

import pytest

from edge.routing.acceptance import judge
from fleet.state import RegionState, Snapshot

A, B = RegionState(name="a"), RegionState(name="b")
A_DRAINED = RegionState(name="a", drained=True)
HELD = Snapshot(version=5, regions={"a": A, "b": B}, taken_at=0.0, epoch=1)

# (current, epoch, version, regions, invalid, taken snapshot's regions or None, refused)
ROWS = [
    (None, 1, 1, {"a": A, "b": B}, {}, {"a": A, "b": B}, None),  # a first state
    (HELD, 1, 6, {"a": A_DRAINED, "b": B}, {}, {"a": A_DRAINED, "b": B}, None),  # newer
    (HELD, 1, 4, {"a": A_DRAINED, "b": B}, {}, None, "older"),  # a replica from an old copy
    (HELD, 0, 9, {"a": A_DRAINED, "b": B}, {}, None, "older"),  # an older epoch, whatever its version
    (HELD, 2, 1, {"a": A_DRAINED, "b": B}, {}, {"a": A_DRAINED, "b": B}, None),  # a deliberate reset
    (HELD, 1, 6, {"a": A_DRAINED}, {}, None, "incomplete"),  # b missing
    (HELD, 1, 6, {"b": B}, {"a": "bad json"}, {"a": A, "b": B}, "invalid"),  # a quarantined: its last good
    (None, 1, 1, {"b": B}, {"a": "bad json"}, None, "invalid"),  # nothing good to keep for a
]


@pytest.mark.parametrize(("current", "epoch", "version", "regions", "invalid", "taken", "refused"), ROWS)
def test_the_acceptance_table(
    current: Snapshot | None,
    epoch: int,
    version: int,
    regions: dict[str, RegionState],
    invalid: dict[str, str],
    taken: dict[str, RegionState] | None,
    refused: str | None,
) -> None:
    got = judge(
        current,
        epoch=epoch,
        version=version,
        regions=regions,
        invalid=invalid,
        topology=("a", "b"),
        taken_at=1.0,
    )
    assert got.refused == refused
    if taken is None:
        assert got.snapshot is None
    else:
        assert got.snapshot is not None and dict(got.snapshot.regions) == taken


def test_the_same_state_again_keeps_the_snapshot_object() -> None:
    got = judge(
        HELD, epoch=1, version=5, regions={"a": A, "b": B}, invalid={}, topology=("a", "b"), taken_at=9.0
    )
    assert got.snapshot is HELD and got.refused is None
