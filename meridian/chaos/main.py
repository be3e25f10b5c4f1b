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

from meridian.chaos.campaign import FAKETIME, Campaign, fleet
from meridian.chaos.checker import check
from meridian.chaos.faults import KINDS, Fault, schedule
from meridian.chaos.history import History
from meridian.chaos.options import add_arguments
from meridian.chaos.plot import timeline
from meridian.chaos.shrink import shrink
from meridian.pressure.fleet import HOME


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="meridian-chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.check:
        return _report(History.read(Path(args.check).read_text().splitlines()), out)
    if "edge-skew" in (args.kind or ()) and FAKETIME is None:
        print("meridian chaos: edge-skew needs libfaketime (apt install faketime)", file=sys.stderr)
        return 2
    faults = schedule(
        random.Random(args.seed),
        steps=args.steps,
        duration=args.duration,
        regions=list(HOME.values()),
        kinds=args.kind or tuple(k for k in KINDS if k != "edge-skew" or FAKETIME),
    )
    history = asyncio.run(_campaign(args, faults))
    (out / "history.jsonl").write_text("\n".join(history.lines()) + "\n")
    code = _report(history, out)
    if code and args.shrink:
        _shrink(args, faults, {v.invariant for v in check(history) if not v.passed}, out)
    return code


def _shrink(args: argparse.Namespace, faults: list[Fault], failed: set[str], out: Path) -> None:
    """Rerun the campaign with fewer faults until none can be left out and ``failed`` still fails."""

    def fails(candidate: list[Fault]) -> bool:
        print(f"shrinking: {len(candidate)} of {len(faults)} faults", flush=True)
        history = asyncio.run(_campaign(args, candidate))
        return bool(failed & {v.invariant for v in check(history) if not v.passed})

    shortest, runs = shrink(faults, fails, runs=args.shrink)
    text = "\n".join(f"{f.at:7.2f} s  {f.duration:5.2f} s  {f.kind} {f.target}".rstrip() for f in shortest)
    (out / "shortest.txt").write_text(text + "\n")
    print(f"shortest failing schedule ({len(shortest)} of {len(faults)} faults, {runs} runs):\n{text}")


async def _campaign(args: argparse.Namespace, faults: list[Fault]) -> History:
    for f in faults:
        print(f"  fault at {f.at:6.2f} s for {f.duration:.2f} s: {f.kind} {f.target}", flush=True)
    logs = Path(tempfile.mkdtemp(prefix="meridian-chaos-logs-"))
    print(f"the fleet logs to {logs}", flush=True)
    began = time.monotonic()
    async with fleet(logs, args.seed) as (running, links):
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
    lines += [f"ledger {b.tenant}: {b.served} answers, {b.tokens} tokens" for b in h.ledgers]
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
