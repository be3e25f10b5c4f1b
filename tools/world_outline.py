"""Release-time tool: the console's world outline (controlplane/console/world.svg) from Natural Earth's land
at 1:110m as world-atlas ships it (TopoJSON), in an equirectangular projection (x = lon + 180, y = 90 - lat),
so the console draws region sites by their regions.yaml coordinates with no map library and no network.

    npm pack world-atlas@2.0.2 && tar xzf world-atlas-2.0.2.tgz
    python tools/world_outline.py package/land-110m.json > controlplane/console/world.svg
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

NOTICE = "Natural Earth land 1:110m (public domain) via world-atlas 2.0.2 (c) 2013-2019 Michael Bostock, ISC"


def arcs_of(topo: dict[str, Any]) -> list[list[tuple[float, float]]]:
    """Every arc in degrees: TopoJSON's quantized, delta-encoded positions decoded."""
    (sx, sy), (tx, ty) = topo["transform"]["scale"], topo["transform"]["translate"]
    out = []
    for arc in topo["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x, y = x + dx, y + dy
            points.append((x * sx + tx, y * sy + ty))
        out.append(points)
    return out


def ring(arcs: list[list[tuple[float, float]]], indices: list[int]) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    for i in indices:
        arc = arcs[i] if i >= 0 else arcs[~i][::-1]
        points.extend(arc[1:] if points else arc)
    return points


def _ring_path(pts: list[tuple[float, float]]) -> str:
    """One ring as SVG path data; a step across the antimeridian starts a new subpath (no line across)."""
    out, prev = [], None
    for lon, lat in pts:
        step = "M" if prev is None or abs(lon - prev) > 180 else "L"
        out.append(f"{step}{lon + 180:.1f},{90 - lat:.1f}")
        prev = lon
    return "".join(out) + "Z"


def path(topo: dict[str, Any]) -> str:
    arcs = arcs_of(topo)
    parts = []
    for geometry in topo["objects"]["land"]["geometries"]:
        polygons = geometry["arcs"] if geometry["type"] == "MultiPolygon" else [geometry["arcs"]]
        for polygon in polygons:
            for indices in polygon:
                parts.append(_ring_path(ring(arcs, indices)))
    return "".join(parts)


def main() -> None:
    topo = json.loads(Path(sys.argv[1]).read_text())
    print(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 360 180"><!-- {NOTICE} -->'
        f'<path fill="#d5dee8" d="{path(topo)}"/></svg>'
    )


if __name__ == "__main__":
    main()
