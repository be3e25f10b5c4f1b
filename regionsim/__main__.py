"""`python -m regionsim`: serve one simulated regional cluster (one or more replicas, one port each)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web

from regionsim.app import STATE, create_app
from regionsim.model import Power


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
    p.add_argument(
        "--model", action="append", default=[], help="a base model every replica serves (repeatable)"
    )
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=BASE", help="a LoRA adapter")
    p.add_argument(
        "--serves",
        action="append",
        default=[],
        metavar="REPLICA=M1,M2",
        help="what one replica serves instead (models and adapters; default: every --model and --adapter)",
    )
    p.add_argument(
        "--off",
        action="append",
        default=[],
        metavar="REPLICA",
        help="a replica whose machine starts switched off (the autoscaler switches it on; repeatable)",
    )
    p.add_argument("--api-key", default=None, help="as vLLM's: the OpenAI routes need this bearer key")
    p.add_argument("--kv-tokens", type=int, default=65_536, help="each replica's KV cache, in tokens")
    p.add_argument("--max-lora", type=int, default=4, help="adapter slots per replica")
    p.add_argument(
        "--prefill-ms-per-1k", type=float, default=40.0, help="prefill time per 1k uncached tokens"
    )
    return p.parse_args(argv)


def served_models(args: argparse.Namespace) -> dict[str, dict[str, str | None]]:
    """Replica -> {model or adapter: its base (None for a base model)}; {} means the simulator's default."""
    adapters: dict[str, str | None] = {}
    for spec in args.adapter:
        name, _, base = spec.partition("=")
        if not name or not base:
            raise SystemExit(f"--adapter {spec!r}: expected NAME=BASE")
        adapters[name] = base
    every: dict[str, str | None] = {m: None for m in args.model}
    every.update({a: b for a, b in adapters.items()})
    out: dict[str, dict[str, str | None]] = {}
    for spec in args.serves:
        replica, _, names = spec.partition("=")
        if not replica or not names:
            raise SystemExit(f"--serves {spec!r}: expected REPLICA=MODEL,MODEL")
        out[replica] = {n: adapters.get(n) for n in names.split(",") if n}
    for spec in args.replica:
        out.setdefault(spec.partition("=")[0], every)
    return out


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
    served = served_models(args)
    names = {spec.partition("=")[0] for spec in args.replica}
    for off in args.off:
        if off not in names:
            raise SystemExit(f"--off {off!r}: not a --replica of this simulator ({', '.join(sorted(names))})")
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
            models=served.get(name) or None,
            kv_tokens=args.kv_tokens,
            max_lora=args.max_lora,
            prefill_ms_per_1k=args.prefill_ms_per_1k,
            api_key=args.api_key,
        )
        if name in args.off:
            app[STATE].power = Power(on=False)
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
