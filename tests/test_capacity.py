"""``meridian capacity``: the plan from a traffic history (pure: peak and p95 per hour, replicas at a target
utilization, three ways to pay) and the shipped sample's report with its plots (the PNGs are opened)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import matplotlib.image
import pytest

from fleet.pools import PoolSpec, Target
from meridian import cli
from meridian.capacity import Assumptions, Sample, plan

ROOT = Path(__file__).resolve().parent.parent
SPEC = PoolSpec(
    model="m",
    min_replicas=1,
    max_replicas=10,
    target=Target(metric="concurrency", value=10),
    on_demand_base=1,
    max_spot_share=0.7,
    price_on_demand_hour=4.0,
    price_spot_hour=1.0,
)


def test_replicas_per_hour_follow_the_peak_and_cost_three_ways() -> None:
    a = Assumptions(target_utilization=0.5, seconds_per_token=0.01, prefill_tokens_per_s=1e12)
    samples = [  # 600 requests a minute of 100 tokens: 10/s x 1 s = 10 busy; at 5 a replica: 2 replicas
        Sample(datetime(2026, 11, 1, 3, m, tzinfo=UTC), "r", "m", 600, 0, 60_000) for m in range(60)
    ] + [Sample(datetime(2026, 11, 1, 4, 0, tzinfo=UTC), "r", "m", 3000, 0, 300_000)]  # a 50/s peak: 10
    (p,) = plan(samples, {("r", "m"): SPEC}, a)
    by_hour = {h.hour: h for h in p.hours}
    assert by_hour[3].replicas == 2 and by_hour[3].peak_rps == 10.0 and by_hour[3].p95_rps == 10.0
    assert by_hour[4].replicas == 10 and by_hour[5].replicas == 1  # an idle hour keeps the pool's minimum
    assert p.baseline == 1
    hours = sum(h.replicas for h in p.hours)  # 1 x 22 + 2 + 10 = 34 replica-hours a day
    assert p.cost_on_demand == hours * 30.4 * 4.0
    assert p.cost_spot_burst == 730 * 4.0 + (hours - 24) * 30.4 * 1.0
    assert p.cost_reserved_spot == 730 * 4.0 * 0.6 + (hours - 24) * 30.4 * 1.0
    assert p.cost_reserved_spot < p.cost_spot_burst < p.cost_on_demand


def test_the_sample_history_gives_a_report_and_three_plots(tmp_path: Path) -> None:
    history = ROOT / "examples" / "traffic_history.csv"
    code = cli.main(
        [
            "capacity",
            "--history",
            str(history),
            "--config",
            str(ROOT / "regions.yaml"),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    text = (tmp_path / "capacity.md").read_text()
    assert "| us-west-2 | llama-3.1-8b-instruct |" in text and "| eu-west-1 | llama-3.1-8b-instruct |" in text
    assert "**all**" in text
    for name in ("traffic.png", "replicas.png", "cost.png"):
        image = matplotlib.image.imread(tmp_path / name)  # a real PNG, drawn
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0
        assert f"]({name})" in text


def test_a_bad_history_row_is_named_by_line(tmp_path: Path) -> None:
    bad = tmp_path / "h.csv"
    bad.write_text(
        "minute,region,model,requests,prompt_tokens,completion_tokens\n2026-11-01T00:00:00Z,r,m,x,1,1\n"
    )
    try:
        cli.main(
            [
                "capacity",
                "--history",
                str(bad),
                "--config",
                str(ROOT / "regions.yaml"),
                "--out",
                str(tmp_path),
            ]
        )
    except SystemExit as exc:
        assert f"{bad}:2" in str(exc)
    else:
        raise AssertionError("a bad row must stop the command")


@pytest.mark.parametrize("value", ["inf", "nan", "-5"])
def test_a_non_finite_or_negative_row_is_named_by_line(tmp_path: Path, value: str) -> None:
    bad = tmp_path / "h.csv"
    bad.write_text(
        "minute,region,model,requests,prompt_tokens,completion_tokens\n"
        "2026-11-01T00:00:00Z,r,m,1,1,1\n"
        f"2026-11-01T00:01:00Z,r,m,{value},1,1\n"
    )
    with pytest.raises(SystemExit) as exc:
        cli.main(
            [
                "capacity",
                "--history",
                str(bad),
                "--config",
                str(ROOT / "regions.yaml"),
                "--out",
                str(tmp_path),
            ]
        )
    message = str(exc.value)
    assert f"{bad}:3:" in message and "requests" in message and "\n" not in message


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--target-utilization", "0"), ("--target-utilization", "1.5"), ("--days", "100000"), ("--days", "nan")],
)
def test_out_of_range_flags_are_one_line_not_a_traceback(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["capacity", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in err and "must be in" in err
