"""Failback with slow start and flap hold-down (pure, no I/O; takes now).

A region that becomes routable again gets its dial ramped from a small share to full over ``ramp_s``.
A region that fails again soon after recovering is flapping: its next return is held back for
``hold_base_s * 2^flaps`` (capped), so an up-blip every few seconds never attracts traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RegionRecovery:
    raw: bool = True  # what the store and passive view say right now
    routable: bool = True  # raw, minus any hold-down
    recovered_at: float | None = None
    lost_at: float | None = None
    flaps: int = 0
    hold_until: float = 0.0


@dataclass(slots=True)
class Failback:
    ramp_s: float = 30.0
    min_share: float = 0.05
    flap_window_s: float = 60.0
    hold_base_s: float = 5.0
    hold_max_s: float = 300.0
    regions: dict[str, RegionRecovery] = field(default_factory=dict)

    def observe(self, region: str, raw: bool, now: float) -> None:
        """Feed the region's raw routability (store health and this edge's passive ejections)."""
        st = self.regions.get(region)
        if st is None:  # first sight: no ramp for regions that were simply there at start-up
            self.regions[region] = RegionRecovery(raw=raw, routable=raw, lost_at=None if raw else now)
            return
        if st.raw and not raw:
            if st.lost_at is not None and now - st.lost_at < self.flap_window_s:
                st.flaps += 1  # lost again soon after the last loss: flapping, hold its next return
                st.hold_until = now + min(self.hold_max_s, self.hold_base_s * 2 ** (st.flaps - 1))
            else:
                st.flaps = 0
            st.lost_at = now
            st.raw = st.routable = False
        elif not st.raw and raw:
            st.raw = True
        if st.raw and not st.routable and now >= st.hold_until:
            st.routable = True
            st.recovered_at = now

    def share(self, region: str, now: float) -> float:
        """Multiplier for the region's dial: 0 while held down, ramping to 1 after a recovery."""
        st = self.regions.get(region)
        if st is None:
            return 1.0
        if not st.routable:
            return 0.0
        if st.recovered_at is None:
            return 1.0
        elapsed = now - st.recovered_at
        if elapsed >= self.ramp_s:
            return 1.0
        return max(self.min_share, elapsed / self.ramp_s)
