"""`meridian chaos` (I/O): a seeded fault campaign on a real local fleet, its history written as JSON lines,
the checker's verdict per invariant; the exit status says whether every invariant held."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from meridian.chaos.campaign import Campaign, fleet
from meridian.chaos.checker import check
from meridian.chaos.faults import KINDS, schedule
from meridian.chaos.history import History
from meridian.chaos.options import add_arguments
from meridian.chaos.plot import timeline
from meridian.pressure.fleet import HOME


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="meridian-chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.check:
        history = History.read(Path(args.check).read_text().splitlines())
    else:
        history = asyncio.run(_campaign(args, out))
        (out / "history.jsonl").write_text("\n".join(history.lines()) + "\n")
    return _report(history, out)


async def _campaign(args: argparse.Namespace, out: Path) -> History:
    rng = random.Random(args.seed)
    faults = schedule(
        rng,
        steps=args.steps,
        duration=args.duration,
        regions=list(HOME.values()),
        kinds=args.kind or tuple(KINDS),
    )
    for f in faults:
        print(f"  fault at {f.at:6.2f} s for {f.duration:.2f} s: {f.kind} {f.target}", flush=True)
    logs = Path(tempfile.mkdtemp(prefix="meridian-chaos-logs-"))
    print(f"the fleet logs to {logs}", flush=True)
    began = time.monotonic()
    async with fleet(logs) as (running, links):
        campaign = Campaign(running, links, faults, args.duration, random.Random(args.seed + 1), args.rate)
        history = await campaign.go()
    print(f"campaign: {time.monotonic() - began:.0f} s", flush=True)
    return history


def _report(h: History, out: Path) -> int:
    kinds = Counter(f.kind for f in h.faults)
    errors = Counter(r.kind for r in h.requests if r.kind != "ok")
    acked = sum(1 for w in h.writes if w.acked)
    lines = [
        f"faults applied: {dict(sorted(kinds.items()))}",
        f"requests: {len(h.requests)} ({dict(sorted(errors.items()))} not ok); writes: {len(h.writes)} "
        f"({acked} acknowledged); snapshot samples: {len(h.samples)}",
    ]
    timeline(h, out / "timeline.png")
    verdicts = check(h)
    for v in verdicts:
        lines.append(f"{'PASS' if v.passed else 'FAIL'} {v.invariant} ({v.checked} checked)")
        lines += [f"    {x}" for x in v.violations[:5]]
    text = "\n".join(lines)
    (out / "verdict.txt").write_text(text + "\n")
    print(text)
    print(f"history and verdict in {out}")
    return 0 if all(v.passed for v in verdicts) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="meridian chaos", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
