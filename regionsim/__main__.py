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
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    runners = []
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
