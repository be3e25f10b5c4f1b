"""`python -m regionsim`: serve one simulated regional cluster (one or more replicas, one port each)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web

from regionsim.app import create_app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="meridian sim", description=__doc__)
    p.add_argument("--region", required=True)
    p.add_argument(
        "--replica",
        action="append",
        required=True,
        metavar="NAME=HOST:PORT",
        help="a replica to serve (repeatable)",
    )
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--per-token-ms", type=float, default=5.0)
    p.add_argument("--max-concurrency", type=int, default=32)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--rtt",
        action="append",
        default=[],
        metavar="EDGE=MS",
        help="network emulation: answers to the edge of region EDGE (X-Meridian-Edge) are delayed by this "
        "round trip, with jitter (repeatable; none: no emulation, e.g. for benchmarks)",
    )
    p.add_argument("--rtt-jitter", type=float, default=0.1, help="± fraction on each emulated round trip")
    return p.parse_args(argv)


def parse_rtt(specs: list[str]) -> dict[str, float]:
    out = {}
    for spec in specs:
        edge, _, ms = spec.partition("=")
        try:
            out[edge] = float(ms)
        except ValueError:
            raise SystemExit(f"--rtt {spec!r}: expected EDGE=MILLISECONDS") from None
        if not edge or out[edge] < 0:
            raise SystemExit(f"--rtt {spec!r}: expected EDGE=MILLISECONDS (≥ 0)")
    return out


async def serve(args: argparse.Namespace) -> None:
    runners = []
    rtt = parse_rtt(args.rtt)
    for spec in args.replica:
        name, _, addr = spec.partition("=")
        host, _, port = addr.rpartition(":")
        if not name or not port.isdigit():
            raise SystemExit(f"--replica {spec!r}: expected NAME=HOST:PORT")
        app = create_app(
            region=args.region,
            replica=name,
            ttft_ms=args.ttft_ms,
            per_token_ms=args.per_token_ms,
            max_concurrency=args.max_concurrency,
            max_queue=args.max_queue,
            seed=args.seed,
            rtt_ms=rtt,
            rtt_jitter=args.rtt_jitter,
        )
        # handler_cancellation: a client that goes away (a cancelled hedge) stops the generation at once
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
        runners.append(runner)
        logging.info("sim %s/%s on %s", args.region, name, addr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for r in runners:
        await r.cleanup()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s sim %(message)s")
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
