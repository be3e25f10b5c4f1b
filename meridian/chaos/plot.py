"""The campaign's timeline (file output only): faults as bands, the client error rate, the served rate per
region and per tenant (with the capped tenant's limit) per second, each edge's applied snapshot version."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from meridian.chaos.history import History

COLOURS = ["#f4cccc", "#cfe2f3", "#d9ead3", "#fff2cc", "#ead1dc", "#d0e0e3", "#fce5cd", "#d9d2e9"]


def timeline(h: History, path: Path) -> None:
    end = max([r.end for r in h.requests] + [f.end for f in h.faults] + [1.0])
    seconds = range(int(end) + 1)
    fig, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    kinds = sorted({f.kind for f in h.faults})
    for f in h.faults:
        colour = COLOURS[kinds.index(f.kind) % len(COLOURS)]
        for ax in axes:
            ax.axvspan(f.start, f.end, color=colour, alpha=0.6, lw=0)
        axes[0].text(f.start, 1.0, f"{f.kind} {f.target}".strip(), fontsize=6, rotation=90, va="top")
    total = [sum(1 for r in h.requests if int(r.start) == s) for s in seconds]
    refused = ("ok", "limited")  # a limit's refusal (and a revoked key's 401) is the design, not an error
    failed = [
        sum(1 for r in h.requests if int(r.start) == s and r.kind not in refused and r.status != 401)
        for s in seconds
    ]
    axes[0].plot(
        list(seconds), [f / t if t else 0.0 for f, t in zip(failed, total, strict=True)], color="red"
    )
    axes[0].set_ylim(0, 1.05)
    axes[0].set_title("client error rate (failed / offered a second; limits, revoked key aside)", fontsize=9)
    for region in sorted({r.region for r in h.requests if r.region}):
        served = [
            sum(1 for r in h.requests if int(r.start) == s and r.region == region and r.kind == "ok")
            for s in seconds
        ]
        axes[1].plot(list(seconds), served, label=region)
    axes[1].set_title("served per second, by region", fontsize=9)
    axes[1].legend(fontsize=7, loc="upper right")
    for tenant in sorted({r.tenant for r in h.requests}):
        served = [
            sum(1 for r in h.requests if int(r.start) == s and r.tenant == tenant and r.kind == "ok")
            for s in seconds
        ]
        axes[2].plot(list(seconds), served, label=tenant)
    for limit in h.limits:
        axes[2].axhline(limit.rpm / 60, color="grey", ls="--", lw=0.8, label=f"{limit.tenant}'s limit")
    axes[2].set_title("admitted (served) per second, by tenant", fontsize=9)
    axes[2].legend(fontsize=7, loc="upper right")
    for edge in sorted({s.edge for s in h.samples}):
        pts = [(s.at, s.version) for s in h.samples if s.edge == edge and s.version is not None]
        axes[3].plot([t for t, _ in pts], [v for _, v in pts], label=f"edge {edge}", drawstyle="steps-post")
    axes[3].set_title("each edge's applied snapshot version", fontsize=9)
    axes[3].legend(fontsize=7, loc="upper left")
    axes[3].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
