"""Read and validate regions.yaml (file I/O only): errors name the file, the field and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fleet.state import Topology


class TopologyError(ValueError):
    """regions.yaml is missing, unparsable or invalid; the message names file, field and line."""


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Walk a composed YAML node tree along a pydantic error location; return the 1-based line."""
    found = node
    for part in loc:
        if isinstance(found, yaml.MappingNode):
            nxt = None
            for k, v in found.value:
                if k.value == part:
                    nxt = v
                    break
            if nxt is None:
                break
            found = nxt
        elif isinstance(found, yaml.SequenceNode) and isinstance(part, int) and part < len(found.value):
            found = found.value[part]
        else:
            break
    return None if found is None else found.start_mark.line + 1


def _fmt_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_topology(text: str, *, source: str = "regions.yaml") -> Topology:
    try:
        data: Any = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise TopologyError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise TopologyError(f"{source}: expected a mapping with 'regions' (and optional 'policy')")
    try:
        return Topology.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            line = _line_of(node, loc)
            where = f"{source}:{line}" if line else source
            lines.append(f"{where}: {_fmt_loc(loc)}: {err['msg']}")
        raise TopologyError("invalid topology\n  " + "\n  ".join(lines)) from exc


def format_settings_error(exc: ValidationError, *, source: str) -> str:
    """A pydantic-settings error as lines naming each field and its MERIDIAN_* variable."""
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        env = "MERIDIAN_" + str(err["loc"][0]).upper() if err["loc"] else ""
        lines.append(f"  {field} ({env}): {err['msg']}")
    return f"invalid {source} settings (environment / .env):\n" + "\n".join(lines)


def load_topology(path: Path | str) -> Topology:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(f"{p}: cannot read regions file: {exc.strerror or exc}") from exc
    return parse_topology(text, source=str(p))
