"""``meridian capacity``'s report (I/O): the plans as Markdown with PNG plots (matplotlib) — traffic by hour,
replicas by hour, monthly cost."""

from __future__ import annotations

from pathlib import Path

from meridian.capacity import Assumptions, PoolPlan


def report(plans: list[PoolPlan], a: Assumptions, out: Path, source: str) -> Path:
    """The Markdown report and its three PNGs in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    charts = draw(plans, out)
    lines = [
        "# Capacity and cost plan",
        "",
        f"From {source}; target utilization {a.target_utilization:.0%} of each replica's target, "
        f"{a.seconds_per_token * 1000:g} ms per completion token, "
        f"reserved discount {a.reserved_discount:.0%}.",
        "",
        "| region | model | peak req/s | p95 req/s (busiest hour) | replicas (min-max by hour) "
        "| all on demand $/month | on-demand baseline + spot | reserved baseline + spot |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        busiest = max(p.hours, key=lambda h: h.peak_rps)
        reps = [h.replicas for h in p.hours]
        spot, reserved = (c / p.cost_on_demand - 1 for c in (p.cost_spot_burst, p.cost_reserved_spot))
        lines.append(
            f"| {p.region} | {p.model} | {busiest.peak_rps:.2f} | {busiest.p95_rps:.2f} "
            f"| {min(reps)}-{max(reps)} | {p.cost_on_demand:,.0f} | {p.cost_spot_burst:,.0f} ({spot:+.0%}) "
            f"| {p.cost_reserved_spot:,.0f} ({reserved:+.0%}) |"
        )
    total = [
        sum(getattr(p, f) for p in plans) for f in ("cost_on_demand", "cost_spot_burst", "cost_reserved_spot")
    ]
    lines += [
        f"| **all** | | | | | **{total[0]:,.0f}** | **{total[1]:,.0f}** | **{total[2]:,.0f}** |",
        "",
        "Replicas per hour of the day (UTC):",
        "",
        "| region | model | " + " | ".join(f"{h:02d}" for h in range(24)) + " |",
        "|---|---|" + "---|" * 24,
    ]
    lines += [
        f"| {p.region} | {p.model} | " + " | ".join(str(h.replicas) for h in p.hours) + " |" for p in plans
    ]
    over = [p for p in plans if max(h.replicas for h in p.hours) > p.max_replicas]
    lines += [
        "",
        *(
            f"**{p.region} {p.model} needs up to {max(h.replicas for h in p.hours)} replicas at its peak; "
            f"its pool allows {p.max_replicas} (raise max_replicas, or add slots).**"
            for p in over
        ),
    ]
    lines += ["", *(f"![{name}]({path.name})" for name, path in charts.items()), ""]
    path = out / "capacity.md"
    path.write_text("\n".join(lines))
    return path


def draw(plans: list[PoolPlan], out: Path) -> dict[str, Path]:
    """Traffic by hour, replicas by hour, monthly cost: one PNG each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = list(range(24))
    charts = {}
    fig, ax = plt.subplots(figsize=(9, 4))
    for p in plans:
        ax.plot(hours, [h.peak_rps for h in p.hours], label=f"{p.region} {p.model} peak")
        ax.plot(hours, [h.p95_rps for h in p.hours], linestyle="--", label=f"{p.region} {p.model} p95")
    ax.set(xlabel="hour of day (UTC)", ylabel="requests / s", title="Traffic by hour")
    ax.legend(fontsize=7)
    charts["traffic by hour"] = _save(fig, out / "traffic.png")
    fig, ax = plt.subplots(figsize=(9, 4))
    for p in plans:
        ax.step(hours, [h.replicas for h in p.hours], where="mid", label=f"{p.region} {p.model}")
    ax.set(xlabel="hour of day (UTC)", ylabel="replicas", title="Replicas needed")
    ax.legend(fontsize=7)
    charts["replicas by hour"] = _save(fig, out / "replicas.png")
    fig, ax = plt.subplots(figsize=(9, 4))
    names = ["all on demand", "on-demand baseline + spot", "reserved baseline + spot"]
    totals = [
        sum(getattr(p, f) for p in plans) for f in ("cost_on_demand", "cost_spot_burst", "cost_reserved_spot")
    ]
    ax.bar(names, totals, color=["#888", "#4a8", "#48a"])
    ax.set(ylabel="$ per month", title="Monthly cost")
    charts["monthly cost"] = _save(fig, out / "cost.png")
    plt.close("all")
    return charts


def _save(fig: object, path: Path) -> Path:
    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=100)  # type: ignore[attr-defined]
    return path
