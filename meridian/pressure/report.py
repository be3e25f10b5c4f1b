"""The pressure run's report (file output only): a Markdown table, one row per scenario (criteria,
measured, PASS/FAIL, the mechanism's evidence), and per scenario a PNG over time: offered vs served RPS
(per tenant where there are several), requests not served by kind, TTFT p50/p95/p99 and the whole
answer's p95, replicas per region (on demand / spot) and cost per hour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from meridian.pressure.fleet import HOME, Scale
from meridian.pressure.verdict import Verdict


def markdown(
    verdicts: list[Verdict],
    scale: Scale,
    sat: float,
    steps: list[tuple[float, float | None, float]],
    controls: frozenset[str],
) -> str:
    lines = [
        "# Pressure report",
        "",
        f"Scale: simulated time runs {scale.time:g}x (a 60 s criterion is {scale.s(60):g} s here); each "
        f"replica an engine batch of {scale.batch}, {scale.tokens} tokens at {scale.per_token_ms:g} ms after "
        f"a {scale.ttft_ms:g} ms first token; loads are multiples of the fleet's saturation rate at its "
        f"minimum (one replica per region): **{sat:.0f} RPS** (sweep: "
        + ", ".join(f"{r:.0f} RPS p95 {'-' if p is None else f'{p * 1000:.0f} ms'}" for r, p, _ in steps)
        + ").",
        "",
    ]
    if controls:
        lines += [f"Negative controls: switched off {', '.join(sorted(controls))}.", ""]
    lines += ["| scenario | criterion | bound | measured | result |", "|---|---|---|---|---|"]
    for v in verdicts:
        if v.error:
            lines.append(f"| {v.title} | could not run | | {v.error} | FAIL |")
            continue
        for i, c in enumerate(v.checks):
            name = v.title if i == 0 else ""
            lines.append(
                f"| {name} | {c.what} | {c.bound} | {c.measured} | {'PASS' if c.passed else 'FAIL'} |"
            )
        lines.append(f"| | mechanism acted | | {'; '.join(v.evidence)} | {'PASS' if v.acted else 'FAIL'} |")
    passed = sum(v.passed for v in verdicts)
    lines += ["", f"**{passed}/{len(verdicts)} scenarios passed.**", ""]
    lines += [
        "Schedules offered (sha256 of each load's arrivals; the same `--seed` gives the same): "
        + "; ".join(f"{v.name} {v.schedule}" for v in verdicts),
        "",
    ]
    lines += [f"![{v.title}]({v.name}.png)\n" for v in verdicts]
    return "\n".join(lines)


def plot(v: Verdict, path: Path) -> None:
    series: dict[str, Any] = v.series
    record, samples, end = series.get("record"), series.get("samples", []), float(series.get("end", 1.0))
    if record is None:
        return
    rows = record.per_second(end)
    fig, axes = plt.subplots(5, 1, figsize=(9, 12), sharex=True)
    t = [r["t"] for r in rows]
    axes[0].plot(t, [r["offered"] for r in rows], label="offered RPS")
    axes[0].plot(t, [r["served"] for r in rows], label="served RPS")
    tenants = record.served_per_tenant(end)
    if len(tenants) > 1:  # where it matters: each tenant's share
        for tenant, served in tenants.items():
            axes[0].plot(t, served[: len(t)], label=f"served, {tenant}", linestyle="--")
    for kind, counts in record.by_kind(end).items():
        axes[1].plot(t, counts[: len(t)], label=kind)
    for q in ("p50", "p95", "p99"):
        axes[2].plot(t, [_nan(r[q]) for r in rows], label=f"TTFT {q}")
    axes[2].plot(t, [_nan(r["total_p95"]) for r in rows], label="whole answer p95", linestyle=":")
    axes[2].set_ylabel("s")
    st = [s["t"] for s in samples]
    for region in HOME.values():
        axes[3].step(
            st,
            [s.get(region, {}).get("on_demand", float("nan")) for s in samples],
            where="post",
            label=f"{region} on demand",
        )
        axes[3].step(
            st,
            [s.get(region, {}).get("spot", float("nan")) for s in samples],
            where="post",
            label=f"{region} spot",
            linestyle="--",
        )
        axes[4].step(
            st,
            [s.get(region, {}).get("cost", float("nan")) for s in samples],
            where="post",
            label=f"{region} $/h",
        )
    titles = ("requests per second", "requests not served, by kind", "latency", "replicas", "cost per hour")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper right")
        for at, label in series.get("marks", []):
            ax.axvline(at, color="grey", linestyle=":")
            ax.text(at, ax.get_ylim()[1], label, fontsize=7, va="top")
    axes[-1].set_xlabel("seconds")
    fig.suptitle(f"{v.title}: {'PASS' if v.passed else 'FAIL'}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value
