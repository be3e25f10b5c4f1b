"""`meridian pressure`'s command line (no I/O, light to import: the CLI builds its parser from it)."""

from __future__ import annotations

import argparse

# the ten, in the seed's order (meridian.pressure.scenarios.SCENARIOS runs them)
NAMES = ("spike", "instances", "cost", "region", "cold", "spot", "thrash", "queue", "sla", "noisy")
CONTROLS = ("autoscaling", "failover", "limits", "spot", "scale-down-window")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", action="append", choices=NAMES, help="run only these (repeatable)")
    p.add_argument("--quick", action="store_true", help="shorter holds: all ten in a few minutes (CI)")
    p.add_argument("--out", default=None, help="where the report, the plots and the fleets' logs go")
    p.add_argument(
        "--seed", type=int, default=1, help="the arrival schedules' seed (same seed, same arrivals)"
    )
    p.add_argument(
        "--control",
        action="append",
        choices=CONTROLS,
        default=[],
        help="a negative control: switch this mechanism off (the scenarios that test it should then fail)",
    )
    p.add_argument("--saturation", type=float, default=None, help="skip the sweep: this many RPS")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
