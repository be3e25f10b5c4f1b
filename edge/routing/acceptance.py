"""Whether a state read from the store may replace the edge's current snapshot (pure, no I/O).

The edge never goes backwards and never routes on a partial view:
- order: snapshots are ordered by (epoch, version); an older one (a replica restarted from an old copy, a
  primary that lost its data) is refused. The epoch rises only by a deliberate, audited reset in the control
  plane, so a store that comes back empty or old cannot pass as new;
- completeness: every region of the topology must be in the store, or the snapshot is refused;
- validity: a region whose record fails validation is quarantined — its state is carried over from the
  current snapshot and reported — and never blocks the other regions' updates. With no earlier state to
  carry over, the snapshot is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleet.state import RegionState, Snapshot


@dataclass(frozen=True, slots=True)
class Acceptance:
    snapshot: Snapshot | None  # the snapshot to route on from now (None: keep the current one)
    refused: str | None = None  # why the store's state was not taken: "older", "incomplete", "invalid"
    detail: str = ""


def judge(
    current: Snapshot | None,
    *,
    epoch: int,
    version: int,
    regions: Mapping[str, RegionState],
    invalid: Mapping[str, str],
    topology: Sequence[str],
    taken_at: float,
) -> Acceptance:
    """The verdict on what the store holds now, given the snapshot the edge routes on."""
    if current is not None and (epoch, version) < current.position:
        return Acceptance(
            None, "older", f"store at epoch {epoch} version {version}, edge at {current.position}"
        )
    missing = [n for n in topology if n not in regions and n not in invalid]
    if missing:
        return Acceptance(None, "incomplete", f"no record for {', '.join(missing)}")
    held = dict(regions)
    for name in invalid:
        prev = None if current is None else current.regions.get(name)
        if prev is None:
            return Acceptance(
                None, "invalid", f"invalid record for {name} and no earlier state: {invalid[name]}"
            )
        held[name] = prev
    if current is not None and (epoch, version) == current.position and held == dict(current.regions):
        return Acceptance(current)  # the same state, confirmed
    snap = Snapshot(
        version=version, regions=held, taken_at=taken_at, epoch=epoch, quarantined=frozenset(invalid)
    )
    if invalid:
        return Acceptance(snap, "invalid", "; ".join(f"{n}: {e}" for n, e in invalid.items()))
    return Acceptance(snap)
