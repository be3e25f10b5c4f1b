"""`meridian chaos`'s command line (no I/O, light to import: the CLI builds its parser from it)."""

from __future__ import annotations

import argparse

from meridian.chaos.faults import KINDS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=1, help="the fault schedule's and the load's seed")
    p.add_argument("--steps", type=int, default=8, help="faults in the campaign")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (faults within them)")
    p.add_argument("--rate", type=float, default=6.0, help="client requests per second")
    p.add_argument("--kind", action="append", choices=sorted(KINDS), help="only these faults (repeatable)")
    p.add_argument("--out", default=None, help="where the history and the verdict go")
    p.add_argument("--check", default=None, metavar="HISTORY", help="only check a recorded history")
    p.add_argument(
        "--shrink",
        type=int,
        default=0,
        metavar="RUNS",
        help="when an invariant fails, rerun with fewer faults (at most RUNS campaigns) to find the shortest "
        "schedule that still fails it",
    )
