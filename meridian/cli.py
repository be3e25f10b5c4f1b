"""The `meridian` command: demo, controlplane, edge, sim, ctl.

The one package that imports both sides (control plane and edge): `edge` and `sim` replace this process
with `python -m edge` / `python -m regionsim`; `controlplane` runs `controlplane.main` in this process.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import sys
import tempfile
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from meridian.chaos.options import add_arguments as add_chaos_arguments
from meridian.pressure.options import add_arguments as add_pressure_arguments


def run_controlplane(_: argparse.Namespace) -> int:
    from controlplane.main import main as controlplane_main

    return controlplane_main()


def _exec_module(module: str, argv: Sequence[str]) -> int:
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])


# ---- ctl -------------------------------------------------------------------------------------------------


def _admin_call(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    token: str = args.token
    if not token:
        raise SystemExit("meridian ctl: set MERIDIAN_TOKEN to an admin bearer token")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(args.url.rstrip("/") + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")
    except urllib.error.URLError as exc:
        raise SystemExit(f"meridian ctl: cannot reach {args.url}: {exc.reason}") from None


DEFAULT_BASE_PORT = 7100


def _demo_credentials(base_port: int | None) -> dict[str, str]:
    """The admin URL and token of the running demo ``ctl`` talks to: the one on ``--base-port``, else the
    one on the default base port, else the only one running (with several, it asks which). Says which
    fleet it picked on stderr."""
    from meridian.demo import running_demos, state_file

    demos = running_demos()
    if base_port is None and len(demos) > 1 and DEFAULT_BASE_PORT in demos:
        base_port = DEFAULT_BASE_PORT  # the README's: others must be named
    if base_port is None and len(demos) > 1:
        raise SystemExit(
            "meridian ctl: demos are running on base ports "
            f"{', '.join(map(str, sorted(demos)))}; choose one with --base-port"
        )
    if base_port is None and not demos:
        return {}
    chosen = demos.get(base_port) if base_port is not None else next(iter(demos.values()))
    path = chosen or state_file(base_port or DEFAULT_BASE_PORT)
    try:
        ready = json.loads(path.read_text())
        admin: dict[str, str] = {**ready["admin"], "api_key": ready.get("api_key", "")}
    except (OSError, ValueError, KeyError):
        raise SystemExit(f"meridian ctl: no running demo on --base-port {base_port}") from None
    print(f"meridian ctl: the demo at {admin.get('url')}", file=sys.stderr)
    if "history_url" in ready:
        admin["history_url"] = ready["history_url"]
    return admin


def _between(low: float, high: float, *, low_ok: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in (low, high] (or [low, high]); else one line naming the range."""

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
        if not math.isfinite(value) or value > high or value < low or (value == low and not low_ok):
            side = "[" if low_ok else "("
            raise argparse.ArgumentTypeError(f"must be in {side}{low:g}, {high:g}], got {raw}")
        return value

    return parse


def _version() -> str:
    try:
        return importlib.metadata.version("meridian")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _row(text: str = "") -> None:
    """One line of a table: control characters (a terminal's escapes in a model or tenant name) shown
    escaped, never sent to the terminal."""
    print("".join(c if c == "\n" or unicodedata.category(c)[0] != "C" else repr(c)[1:-1] for c in text))


def _print_result(
    status: int,
    payload: Any,
    args: argparse.Namespace | None = None,
    human: Callable[[Any], str] | None = None,
) -> int:
    """ctl's one voice: an error is one line on stderr (exit 1); an answer is ``human``'s short text, or
    the admin API's JSON as it is with ``--json`` (or when there is no short form)."""
    if not 200 <= status < 300:
        print(f"meridian ctl: {_why(status, payload)}", file=sys.stderr)
        return 1
    if human is not None and not (args is not None and getattr(args, "json", False)):
        for line in human(payload).splitlines():
            _row(line)
        return 0
    print(json.dumps(payload, indent=2))
    return 0


def _why(status: int, payload: Any) -> str:
    """An error answer in one line: its status and the API's own words."""
    detail: Any = payload
    if isinstance(payload, dict):
        err = payload.get("error")
        detail = payload.get("detail") or (err.get("message") if isinstance(err, dict) else None) or payload
        fields = payload.get("fields")
        if fields:
            detail = f"{detail} (fields: {', '.join(map(str, fields))})"
    text = " ".join(str(detail).split())
    return f"HTTP {status}: {text[:300]}"


def _region_change(p: dict[str, Any]) -> str:
    b, a = p["before"], p["after"]
    return (
        f"{a['name']}: weight {b['weight']} -> {a['weight']}, drained {str(b['drained']).lower()} -> "
        f"{str(a['drained']).lower()} (version {a['version']})"
    )


def _audit(p: dict[str, Any]) -> str:
    """One line an entry, within 100 columns (the reason cut to fit; --json has it whole)."""
    rows = [f"{'at (UTC)':<20}{'actor':<14}{'what':<30}{'where':<22}why"]
    for e in p["entries"]:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(e["at"])))
        line = f"{at:<20}{e['actor'][:13]:<14}{e['action'][:29]:<30}{e['region'][:21]:<22}{e['reason']}"
        rows.append(line if len(line) <= 100 else line[:99] + "…")
    return "\n".join(row.rstrip() for row in rows)


def _tenant_line(t: dict[str, Any]) -> str:
    limits = ", ".join(f"{k} {v}" for k, v in t.get("limits", {}).items() if v is not None)
    budget = t.get("budget")
    spend = f"; budget ${budget['usd']:g}/{budget['period']}" if budget else ""
    return f"{t['id']}  {t['name']}  ({limits or 'no limits'}; priority {t['priority']}{spend})"


def run_ctl(args: argparse.Namespace) -> int:
    env_url, env_token = os.environ.get("MERIDIAN_ADMIN_URL"), os.environ.get("MERIDIAN_TOKEN", "")
    explicit = (args.url or env_url) and env_token and args.base_port is None
    demo = {} if explicit else _demo_credentials(args.base_port)
    args.url = args.url or env_url or demo.get("url", "http://127.0.0.1:7100")
    args.token = env_token or demo.get("token", "")
    if args.ctl == "token":  # the running demo's admin token: the console's sign-in
        token = demo.get("viewer_token" if args.viewer else "token")
        if not token:
            raise SystemExit("meridian ctl: no running demo to print a token of")
        print(token)
        return 0
    if args.ctl == "api-key":  # the running demo's client key, for curl -H "Authorization: Bearer ..."
        if not demo.get("api_key"):
            raise SystemExit("meridian ctl: no running demo with an API key (keys: meridian ctl key-issue)")
        print(demo["api_key"])
        return 0
    if args.ctl in TENANT_VERBS:
        return _tenant_ctl(args)
    if args.ctl == "regions":
        status, payload = _admin_call(args, "GET", "/v1/regions")
        if status != 200 or args.json:
            return _print_result(status, payload)
        _row(f"{'region':<16}{'weight':>7}  {'drained':<8}{'health':<10}{'util':>6}  {'latency':>9}  version")
        for r in payload["regions"]:
            if "invalid" in r:  # a stored record that fails validation: say so, and how to repair it
                _row(f"{r['name']:<16}invalid record ({r['invalid']}); repair: {r['repair']}")
                continue
            lat = "-" if r["latency_ms"] is None else f"{r['latency_ms']:.0f}ms"
            _row(
                f"{r['name']:<16}{r['weight']:>7}  {r['drained']!s:<8}{r['health']:<10}"
                f"{r['utilization']:>6.2f}  {lat:>9}  {r['version']}"
            )
        return 0
    if args.ctl == "pools":
        return _pools(args)
    if args.ctl == "store":
        return _store(args)
    if args.ctl == "audit":
        status, payload = _admin_call(args, "GET", f"/v1/audit?limit={args.limit}")
        return _print_result(status, payload, args, _audit)
    body: dict[str, Any] = {"reason": args.reason}
    if args.ctl == "set-weight":
        body["weight"] = args.weight
    elif args.ctl == "drain":
        body["drained"] = True
    elif args.ctl == "undrain":
        body["drained"] = False
    headers = {"If-Match": str(args.if_match)} if args.if_match is not None else None
    status, payload = _admin_call(args, "PATCH", f"/v1/regions/{args.region}", body, headers)
    return _print_result(status, payload, args, _region_change)


TENANT_VERBS = (
    "tenants",
    "tenant-create",
    "tenant-set",
    "tenant-delete",
    "keys",
    "key-issue",
    "key-revoke",
    "usage",
)


def _tenant_ref(args: argparse.Namespace, ref: str) -> str:
    """The id of the tenant ``ref`` names: an id, or a name (names are unique, without case)."""
    if ref.startswith("t-"):
        return ref
    status, payload = _admin_call(args, "GET", "/v1/tenants")
    if status == 200:
        for t in payload["tenants"]:
            if t["name"].casefold() == ref.casefold():
                return str(t["id"])
    return ref  # the API answers 404 naming it


def _limits(args: argparse.Namespace) -> dict[str, float]:
    fields = ("rpm", "tpm", "max_concurrent", "burst_s")
    return {k: v for k in fields if (v := getattr(args, k)) is not None}


UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _expiry(expires_in: str | None, expires_at: str | None) -> str | None:
    """``--expires-in 90d`` or ``--expires-at ISO`` as the ISO 8601 time the admin API takes."""
    if expires_at is not None:
        return expires_at
    if expires_in is None:
        return None
    number, unit = expires_in[:-1], expires_in[-1:]
    if unit not in UNITS_S or not number.replace(".", "", 1).isdigit():
        raise SystemExit(
            f"meridian ctl: --expires-in {expires_in!r}: a number and one of s, m, h, d (e.g. 90d)"
        )
    at = datetime.now(UTC) + timedelta(seconds=float(number) * UNITS_S[unit])
    return at.isoformat(timespec="seconds")


def _key_line(k: dict[str, Any]) -> str:
    expires = k.get("expires_at")
    until = "never expires" if expires is None else f"expires {_utc(expires)}"
    return f"{k['id']}  {k['prefix']}…  created {_utc(k['created_at'])}  {until}"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _tenant_ctl(args: argparse.Namespace) -> int:
    """Tenants and their API keys through the admin API (a key's secret is printed once, when issued). A
    tenant is named by its id or its name."""
    verb = args.ctl
    if getattr(args, "tenant", None):
        args.tenant = _tenant_ref(args, args.tenant)
    if verb == "tenants":
        status, payload = _admin_call(args, "GET", "/v1/tenants")
        return _print_result(status, payload, args, lambda p: "\n".join(map(_tenant_line, p["tenants"])))
    if verb == "keys":
        status, payload = _admin_call(args, "GET", f"/v1/tenants/{args.tenant}/keys")
        return _print_result(status, payload, args, lambda p: "\n".join(map(_key_line, p["keys"])))
    if verb == "key-issue":
        expires = _expiry(args.expires_in, args.expires_at)
        terms = {"expires_at": expires} if expires else None
        status, payload = _admin_call(args, "POST", f"/v1/tenants/{args.tenant}/keys", terms)
        return _print_result(
            status,
            payload,
            args,
            lambda p: f"{p['key']}\n(key {p['id']} of tenant {p['tenant']}: shown once)",
        )
    if verb == "key-revoke":
        status, payload = _admin_call(args, "DELETE", f"/v1/tenants/{args.tenant}/keys/{args.key}")
        return _print_result(
            status, payload, args, lambda _: f"revoked key {args.key} of tenant {args.tenant}"
        )
    if verb == "tenant-delete":
        status, payload = _admin_call(args, "DELETE", f"/v1/tenants/{args.tenant}")
        return _print_result(status, payload, args, lambda _: f"deleted tenant {args.tenant} and its keys")
    if verb == "usage":
        return _usage(args)
    body: dict[str, Any] = {"reason": args.reason or ""}
    if _limits(args):
        body["limits"] = _limits(args)
    if args.priority:
        body["priority"] = args.priority
    if args.max_priority:
        body["max_priority"] = args.max_priority
    if args.models is not None:
        body["models"] = [m for m in args.models.split(",") if m] or None
    if args.budget_usd is not None:
        body["budget"] = (
            None if args.budget_usd == 0 else {"usd": args.budget_usd, "period": args.budget_period}
        )
    if verb == "tenant-create":
        status, payload = _admin_call(args, "POST", "/v1/tenants", {"name": args.name, **body})
        return _print_result(status, payload, args, _tenant_line)
    if args.name:
        body["name"] = args.name
    status, payload = _admin_call(args, "PATCH", f"/v1/tenants/{args.tenant}", body)
    return _print_result(status, payload, args, _tenant_line)


def _pools(args: argparse.Namespace) -> int:
    """Every autoscaled pool: replicas on and desired, on demand and spot, $/h, and why."""
    status, payload = _admin_call(args, "GET", "/v1/pools")
    if status != 200 or args.json:
        return _print_result(status, payload)
    _row(f"{'region':<16}{'model':<26}{'current':>8}{'desired':>8}{'od':>4}{'spot':>5}{'$/h':>8}  why")
    for p in payload["pools"]:
        flags = ("PANIC " if p["panic"] else "") + ("COST-CAPPED " if p["cost_capped"] else "")
        _row(
            f"{p['region']:<16}{p['model'][:25]:<26}{p['current']:>8}{p['desired']:>8}{p['on_demand']:>4}"
            f"{p['spot']:>5}{p['cost_per_hour']:>8.2f}  {flags}{p['reason']}"
        )
    return 0


def _store(args: argparse.Namespace) -> int:
    """The store's position and where each edge stands against it (or the JSON with --json)."""
    status, payload = _admin_call(args, "GET", "/v1/store")
    if status != 200 or args.json:
        return _print_result(status, payload)
    began = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(payload["epoch"] / 1000))
    _row(
        f"store: epoch {payload['epoch']} (began {began}), version {payload['version']}, "
        f"key set version {payload['keys_version']}"
    )
    _row(f"{'edge':<16}{'snapshot':>24}{'key set':>24}  {'applied (UTC)':<21}standing")
    for e in payload["edges"]:
        snap = "/".join(map(str, e["snapshot"]))
        keys = "-" if e["keys"] is None else "/".join(map(str, e["keys"]))
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["applied_at"]))
        said = "silent" if e["silent"] else e["standing"]  # no report for 10 s: down, or cut off
        _row(f"{e['edge']:<16}{snap:>24}{keys:>24}  {at:<21}{said}")
    for name in payload["unreported"]:
        _row(f"{name:<16}{'(nothing reported: the edge is down or has no snapshot yet)':>48}")
    return 0


def _top(args: argparse.Namespace) -> int:
    """The tenants using most over the span, as a table (or the JSON with --json)."""
    span = {k: v for k in ("from", "to") if (v := getattr(args, k))}
    query = urllib.parse.urlencode({"by": args.by, "n": args.top, **span})
    status, payload = _admin_call(args, "GET", f"/v1/usage/top?{query}")
    if status != 200 or args.json:
        return _print_result(status, payload)
    _row(f"top {args.top} tenants by {payload['by']} from {payload['start']} to {payload['end']}")
    _row(
        f"{'tenant':<16}{'name':<24}{'requests':>10}{'prompt':>12}{'completion':>12}{'errors':>8}{'USD':>11}"
    )
    for u in payload["tenants"]:
        t = u["totals"]
        _row(
            f"{u['tenant']:<16}{u['name'][:23]:<24}{t['requests']:>10}{t['prompt_tokens']:>12}"
            f"{t['completion_tokens']:>12}{t['errors']:>8}{t['spend_usd']:>11.4f}"
        )
    if not payload["tenants"]:
        _row("(no tenant used anything in this span)")
    return 0


def _usage(args: argparse.Namespace) -> int:
    """A tenant's usage per hour, model and region, as a table (or the JSON with --json)."""
    if args.top is not None:
        return _top(args)
    if args.tenant is None:
        raise SystemExit("meridian ctl usage: name a tenant, or ask for --top N")
    query = urllib.parse.urlencode({k: v for k in ("from", "to") if (v := getattr(args, k))})
    status, payload = _admin_call(args, "GET", f"/v1/tenants/{args.tenant}/usage?{query}")
    if status != 200 or args.json:
        return _print_result(status, payload)
    _row(f"usage of {payload['tenant']} from {payload['start']} to {payload['end']}")
    _row(
        f"{'hour (UTC)':<15}{'model':<23}{'region':<15}{'requests':>9}{'prompt':>10}{'completion':>11}"
        f"{'errors':>7}{'USD':>10}"
    )
    for r in [*payload["rows"], {"hour": "total", "model": "", "region": "", **payload["totals"]}]:
        hour = r["hour"] if r["hour"] == "total" else r["hour"][:13] + "h"  # 2026-12-06T12h
        _row(
            f"{hour:<15}{r['model'][:22]:<23}{r['region'][:14]:<15}{r['requests']:>9}{r['prompt_tokens']:>10}"
            f"{r['completion_tokens']:>11}{r['errors']:>7}{r['spend_usd']:>10.4f}"
        )
    _row(f"\n{'day':<12}{'model':<28}{'requests':>9}{'USD':>11}")
    for d in payload["daily"]:
        _row(f"{d['day']:<12}{d['model'][:27]:<28}{d['requests']:>9}{d['spend_usd']:>11.4f}")
    if (b := payload.get("budget")) is not None:
        _row(
            f"\nbudget ${b['usd']:g} a {b['period']}: spent ${b['spent_usd']:.4f}, "
            f"held ${b['held_usd']:.4f}, left ${b['left_usd']:.4f}; renews {b['period_ends']}"
        )
    return 0


def _tenant_parsers(ctl_sub: Any) -> None:
    ctl_sub.add_parser("api-key", help="print the running demo's client API key")
    token = ctl_sub.add_parser("token", help="print the running demo's operator token (console sign-in)")
    token.add_argument("--viewer", action="store_true", help="the viewer's token (sees, cannot change)")
    ctl_sub.add_parser("tenants", help="list tenants")
    create = ctl_sub.add_parser("tenant-create", help="create a tenant")
    create.add_argument("name")
    change = ctl_sub.add_parser("tenant-set", help="change a tenant (only the fields given)")
    change.add_argument("tenant")
    change.add_argument("--name", default=None)
    for c in (create, change):
        c.add_argument("--rpm", type=int, default=None, help="requests per minute, across every edge")
        c.add_argument("--tpm", type=int, default=None, help="tokens per minute")
        c.add_argument("--max-concurrent", type=int, default=None, help="requests in flight")
        c.add_argument("--burst-s", type=float, default=None, help="seconds of the rate at once (default 1)")
        c.add_argument("--priority", choices=("critical", "normal", "batch"), default=None)
        c.add_argument(
            "--max-priority",
            choices=("critical", "normal", "batch"),
            default=None,
            help="the highest X-Meridian-Priority may ask for",
        )
        c.add_argument("--models", default=None, help="comma-separated models it may use (empty: all)")
        c.add_argument(
            "--budget-usd",
            type=float,
            default=None,
            help="what it may spend per period at the catalog's prices (0: no budget)",
        )
        c.add_argument("--budget-period", choices=("day", "month"), default="month")
        c.add_argument("--reason", default="", help="recorded in the audit log")
    for name, what in (("tenant-delete", "delete a tenant and its keys"), ("keys", "list a tenant's keys")):
        ctl_sub.add_parser(name, help=what).add_argument("tenant")
    issue = ctl_sub.add_parser("key-issue", help="issue a key (printed once)")
    issue.add_argument("tenant")
    when = issue.add_mutually_exclusive_group()
    when.add_argument("--expires-in", default=None, help="e.g. 90d, 12h, 30m: every edge refuses it after")
    when.add_argument("--expires-at", default=None, help="ISO 8601 with a zone, e.g. 2027-01-01T00:00:00Z")
    usage = ctl_sub.add_parser(
        "usage", help="a tenant's usage per hour, model and region; or --top N: the tenants using most"
    )
    usage.add_argument("tenant", nargs="?", default=None)
    usage.add_argument("--top", type=int, default=None, metavar="N", help="the N tenants using most")
    usage.add_argument("--by", choices=("tokens", "requests", "spend"), default="tokens")
    usage.add_argument("--from", dest="from", default=None, help="ISO 8601 (default: 24 hours before --to)")
    usage.add_argument("--to", default=None, help="ISO 8601 (default: now)")
    revoke = ctl_sub.add_parser("key-revoke", help="revoke a key (every edge refuses it within a second)")
    revoke.add_argument("tenant")
    revoke.add_argument("key")


def run_demo(args: argparse.Namespace) -> int:
    from meridian.demo import run

    return run(config=args.config, base_port=args.base_port, network=not args.no_network)


def run_up(args: argparse.Namespace) -> int:
    from meridian.demo import run

    return run(config=args.regions_file, base_port=args.base_port, simulated=False)


def run_k8s(args: argparse.Namespace) -> int:
    """Print (or write, one file per region) the fleet's manifests — edges, control plane, topology — and
    the KEDA and Deployment manifests of regions.yaml's pools."""
    import yaml

    from fleet.topology import TopologyError, load_topology
    from meridian.k8s import render
    from meridian.k8s_fleet import render_fleet

    try:
        topo = load_topology(Path(args.config))
    except TopologyError as exc:  # names the file and line
        raise SystemExit(f"meridian k8s: {exc}") from None
    if args.home_region is not None and args.home_region not in topo.names:
        raise SystemExit(f"meridian k8s: --home-region {args.home_region!r} is not a region of {args.config}")
    image = args.image or f"ghcr.io/meridian/meridian:{importlib.metadata.version('meridian')}"
    fleet = render_fleet(
        topo, Path(args.config).read_text(), image=image, namespace=args.namespace, home=args.home_region
    )
    pools = render(topo, controlplane_url=args.controlplane_url, namespace=args.namespace)
    for region, docs in ((r, [*fleet[r], *pools.get(r, [])]) for r in topo.names):
        text = yaml.safe_dump_all(docs, sort_keys=False)
        if args.out:
            out = Path(args.out) / f"{region}.yaml"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            print(f"{out}: {len(docs)} manifests")
        else:
            print(f"# region {region}\n---\n{text}---")
    return 0


def run_chaos(args: argparse.Namespace) -> int:
    from meridian.chaos.main import run

    return run(args)


def run_pressure(args: argparse.Namespace) -> int:
    from meridian.pressure.main import run

    return run(args)


def run_capacity(args: argparse.Namespace) -> int:
    """The capacity and cost report from a traffic history (CSV) and regions.yaml's pools."""
    from redis.exceptions import RedisError

    from fleet.redisconn import redact
    from fleet.topology import TopologyError, load_topology
    from meridian.capacity import Assumptions, plan, pools_of
    from meridian.capacity_io import read_csv, read_store
    from meridian.capacity_report import report

    if args.demo:  # the running demo's own history, with its control plane's credentials
        args.redis = _demo_credentials(args.base_port).get("history_url")
        if not args.redis:
            raise SystemExit("meridian capacity: no running demo (start one with `meridian demo`)")
    try:
        topo = load_topology(Path(args.config))
        if args.redis:
            samples = read_store(args.redis, topo.names, days=args.days, now=time.time())
            args.history = f"the traffic recorded in {redact(args.redis)} (last {args.days:g} days)"
        else:
            samples = read_csv(Path(args.history))
    except (TopologyError, ValueError, OSError) as exc:
        raise SystemExit(f"meridian capacity: {exc}") from None
    except RedisError as exc:  # e.g. the ready line's URL, which carries no credentials
        raise SystemExit(
            f"meridian capacity: {redact(args.redis or '')} refused: {type(exc).__name__}: {exc}; the URL "
            "needs the control plane's Redis user and password (for the demo: `meridian capacity --demo`)"
        ) from None
    a = Assumptions(target_utilization=args.target_utilization, reserved_discount=args.reserved_discount)
    plans = plan(samples, pools_of(topo), a)
    if not plans:
        raise SystemExit(f"meridian capacity: no pool of {args.config} has traffic in {args.history}")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="meridian-capacity-"))
    path = report(plans, a, out, source=args.history)
    print(path.read_text())
    print(f"report: {path} (plots beside it)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meridian", description="Meridian: multi-region routing for LLM APIs")
    p.add_argument("--version", action="version", version=f"meridian {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="run a local fleet: Redis primary + replicas, control plane, "
        "simulated clusters, one edge per region",
    )
    demo.add_argument("--config", default="regions.yaml", help="topology file (default: regions.yaml)")
    demo.add_argument(
        "--base-port", type=int, default=DEFAULT_BASE_PORT, help="first port of the fleet (default: 7100)"
    )
    demo.add_argument(
        "--no-network",
        action="store_true",
        help="no emulated network: simulated regions answer every edge at once (for benchmarks)",
    )
    demo.set_defaults(func=run_demo)

    up = sub.add_parser(
        "up",
        help="run the control plane, Redis and one edge per region locally in front of the replicas a "
        "regions file names (your own OpenAI-compatible servers): the demo without simulators",
    )
    up.add_argument("--regions-file", required=True, help="topology file whose replica URLs are real servers")
    up.add_argument(
        "--base-port", type=int, default=DEFAULT_BASE_PORT, help="first port of the fleet (default: 7100)"
    )
    up.set_defaults(func=run_up)

    k8s = sub.add_parser(
        "k8s", help="render the fleet for Kubernetes: edges, control plane, and KEDA for regions.yaml's pools"
    )
    k8s.add_argument("--config", default="regions.yaml", help="topology file (default: regions.yaml)")
    k8s.add_argument(
        "--controlplane-url",
        default="http://meridian-controlplane.meridian.svc:8700",
        help="the admin API as KEDA reaches it",
    )
    k8s.add_argument("--namespace", default="meridian")
    k8s.add_argument("--image", default=None, help="the Meridian image (default: this version's)")
    k8s.add_argument("--home-region", default=None, help="where the control plane runs (default: the first)")
    k8s.add_argument("--out", default=None, help="write <region>.yaml files here instead of printing")
    k8s.set_defaults(func=run_k8s)

    cap = sub.add_parser(
        "capacity", help="capacity and cost plan (Markdown + PNG plots) from a traffic history"
    )
    cap.add_argument("--history", default="examples/traffic_history.csv", help="CSV: minute,region,model,...")
    cap.add_argument(
        "--config", default="regions.yaml", help="topology file with the pools (default: regions.yaml)"
    )
    cap.add_argument(
        "--redis", default=None, help="read the traffic the edges recorded in this Redis instead"
    )
    cap.add_argument(
        "--demo", action="store_true", help="read the running demo's recorded traffic (its credentials too)"
    )
    cap.add_argument("--base-port", type=int, default=None, help="with --demo: the demo on this base port")
    cap.add_argument(
        "--days", type=_between(0.0, 35.0), default=7.0, help="with --redis: how far back (at most 35)"
    )
    cap.add_argument(
        "--out", default=None, help="directory for capacity.md and the PNGs (default: a new temporary one)"
    )
    cap.add_argument(
        "--target-utilization", type=_between(0.0, 1.0), default=0.7, help="of each replica's target (0-1]"
    )
    cap.add_argument(
        "--reserved-discount",
        type=_between(0.0, 1.0, low_ok=True),
        default=0.4,
        help="a reservation's discount",
    )
    cap.set_defaults(func=run_capacity)

    pressure = sub.add_parser(
        "pressure",
        help="the ten pressure tests on a real local fleet, open-loop load (Markdown report + PNG plots)",
    )
    add_pressure_arguments(pressure)
    pressure.set_defaults(func=run_pressure)

    chaos = sub.add_parser(
        "chaos", help="a seeded fault campaign on a real local fleet, and a checker of its recorded history"
    )
    add_chaos_arguments(chaos)
    chaos.set_defaults(func=run_chaos)

    cp = sub.add_parser("controlplane", help="run the admin API + health prober (settings from MERIDIAN_*)")
    cp.set_defaults(func=run_controlplane)
    edge = sub.add_parser("edge", help="run one edge (settings from MERIDIAN_*)")
    edge.set_defaults(func=lambda a: _exec_module("edge", a.rest))
    sim = sub.add_parser(
        "sim", help="run a simulated regional cluster (see `meridian sim --help`)", add_help=False
    )
    sim.set_defaults(func=lambda a: _exec_module("regionsim", a.rest))
    for sp in (edge, sim):
        sp.add_argument("rest", nargs=argparse.REMAINDER)

    ctl = sub.add_parser("ctl", help="operate the admin API (token from MERIDIAN_TOKEN)")
    ctl.add_argument(
        "--url", default=None, help="admin API base URL (default: $MERIDIAN_ADMIN_URL, else a running demo's)"
    )
    ctl.add_argument(
        "--base-port", type=int, default=None, help="the running demo to talk to, when several are running"
    )
    ctl_sub = ctl.add_subparsers(dest="ctl", required=True)
    ctl.add_argument("--json", action="store_true", help="the admin API's answer as it is (any verb)")
    ctl_sub.add_parser("regions", help="list regions")
    ctl_sub.add_parser("pools", help="autoscaled pools: current, desired, spot/on-demand, $/h, why")
    ctl_sub.add_parser("store", help="the state store's epoch and version, and where each edge stands")
    audit = ctl_sub.add_parser("audit", help="show the audit log")
    audit.add_argument("--limit", type=int, default=20)
    sw = ctl_sub.add_parser("set-weight", help="set a region's traffic dial (0-100)")
    sw.add_argument("region")
    sw.add_argument("weight", type=int)
    for name in ("drain", "undrain"):
        c = ctl_sub.add_parser(name, help=f"{name} a region")
        c.add_argument("region")
    for c in (sw, ctl_sub.choices["drain"], ctl_sub.choices["undrain"]):
        c.add_argument("--reason", required=True, help="why (recorded in the audit log)")
        c.add_argument("--if-match", type=int, default=None, help="only if the region is at this version")
    _tenant_parsers(ctl_sub)
    ctl.set_defaults(func=run_ctl)
    return p


def settings_help(command: str) -> str:
    """Every MERIDIAN_* variable a component reads: name, default and meaning, from its settings model."""
    from pydantic_settings import BaseSettings

    from controlplane.settings import ControlPlaneSettings
    from edge.settings import EdgeSettings

    model: type[BaseSettings] = EdgeSettings if command == "edge" else ControlPlaneSettings
    lines = [f"usage: meridian {command}   (configured by environment variables or a .env file)", ""]
    for name, field in model.model_fields.items():
        value = field.get_default(call_default_factory=True)
        default = (
            "(required)" if field.is_required() else str(value) if isinstance(value, Path) else repr(value)
        )
        if len(default) > 48:
            default = default[:45] + "..."
        lines.append(f"  MERIDIAN_{name.upper():<34} {default}")
        if field.description:
            lines.append(f"      {field.description}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("edge", "controlplane") and any(a in ("-h", "--help") for a in argv[1:]):
        print(settings_help(argv[0]))
        return 0
    if argv and argv[0] in ("sim", "edge"):  # everything after the word belongs to the component
        return _exec_module("regionsim" if argv[0] == "sim" else "edge", argv[1:])
    if argv and argv[0] == "ctl":
        argv = ["ctl", *_hoist(argv[1:], {"--base-port": True, "--url": True, "--json": False})]
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except BrokenPipeError:  # `meridian ctl … | head`: the reader left, nothing more to say
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:  # Ctrl-C while a command starts or waits: quietly, as the shell expects
        return 130
    return result


def _hoist(words: list[str], options: dict[str, bool]) -> list[str]:
    """``ctl``'s own options (name -> takes a value) moved before its verb, wherever they were written
    (``ctl usage t --base-port 7100`` is ``ctl --base-port 7100 usage t``)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        name = word.split("=", 1)[0]
        if name in options:
            take = 2 if options[name] and "=" not in word else 1
            front += words[i : i + take]
            i += take
        else:
            rest.append(word)
            i += 1
    return front + rest


if __name__ == "__main__":
    raise SystemExit(main())
