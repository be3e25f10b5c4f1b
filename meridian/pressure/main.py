"""`meridian pressure` (I/O): the saturation sweep, then each chosen scenario on its own fresh fleet, then
the report and the plots; the exit status says whether every scenario passed."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from meridian.pressure.fleet import Scale
from meridian.pressure.options import add_arguments
from meridian.pressure.report import markdown, plot
from meridian.pressure.scenarios import SCENARIOS, Ctx, sweep
from meridian.pressure.verdict import Verdict


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="meridian-pressure-"))
    out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_run(args, out))


async def _run(args: argparse.Namespace, out: Path) -> int:
    scale = Scale()
    began = time.monotonic()
    logs = Path(tempfile.mkdtemp(prefix="meridian-pressure-logs-"))  # the fleets' own, kept apart
    print(f"the fleets log to {logs}", flush=True)
    steps: list[tuple[float, float | None, float]] = []
    if args.saturation:
        sat = float(args.saturation)
    else:
        sat, steps = await sweep(scale, args.seed, logs, args.quick)
    print(f"saturation at the fleet's minimum: {sat:.0f} RPS ({time.monotonic() - began:.0f} s)", flush=True)
    ctx = Ctx(scale, sat, args.quick, args.seed, logs, frozenset(args.control))
    verdicts: list[Verdict] = []
    for name in args.scenario or list(SCENARIOS):
        t = time.monotonic()
        ctx.offered.clear()
        try:
            v = await SCENARIOS[name](ctx)
        except Exception as exc:  # a scenario that cannot run fails; the others still run
            v = Verdict(name, name, error=f"{type(exc).__name__}: {exc}")
        v.schedule = " ".join(ctx.offered)
        verdicts.append(v)
        if args.debug:
            for row in v.series.get("samples", []):
                print(f"  {row['t']:5.2f} " + " ".join(f"{g}:{row[g]}" for g in row if g != "t"), flush=True)
        plot(v, out / f"{name}.png")
        print(f"{name:10s} {'PASS' if v.passed else 'FAIL'} ({time.monotonic() - t:.0f} s)", flush=True)
        for c in v.checks:
            print(f"    {'ok ' if c.passed else 'BAD'} {c.what}: {c.measured} (bound {c.bound})", flush=True)
        print(f"    {'ok ' if v.acted else 'BAD'} mechanism: {'; '.join(v.evidence) or v.error}", flush=True)
    report = markdown(verdicts, scale, sat, steps, ctx.controls)
    (out / "report.md").write_text(report)
    print(report)
    print(f"report and plots in {out} ({time.monotonic() - began:.0f} s)")
    return 0 if all(v.passed for v in verdicts) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="meridian pressure", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
