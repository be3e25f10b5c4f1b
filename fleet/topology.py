"""Read and validate regions.yaml (file I/O only): errors name the file, the field and the line."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from dotenv import dotenv_values
from pydantic import BeforeValidator, ValidationError
from pydantic_settings import SettingsError

from fleet import envcheck
from fleet.state import Topology

LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
    BeforeValidator(lambda v: v.strip().upper() if isinstance(v, str) else v),
]  # a settings field naming a log level, any case


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
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TopologyError(f"{where}: not valid YAML: {problem}") from exc
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


def check_environment(environ: Mapping[str, str] | None = None, dotenv: Path = Path(".env")) -> str | None:
    """The process's MERIDIAN_* variables (and its .env file's, which the settings read too) checked
    against every component's settings: one line naming an unknown one, else None."""
    values = dotenv_values(dotenv) if dotenv.is_file() else {}
    return envcheck.check(os.environ if environ is None else environ, values)


def format_settings_error(exc: ValidationError | SettingsError, *, source: str) -> str:
    """A settings error as lines naming each field and its MERIDIAN_* variable (no pydantic internals)."""
    if isinstance(exc, SettingsError):  # a value that could not even be parsed (e.g. bad JSON)
        m = re.search(r'field "([^"]+)"', str(exc))
        name = m.group(1) if m else "settings"
        cause = exc.__cause__
        why = f": {str(cause).splitlines()[0]}" if cause else ""
        return f"invalid {source} settings: MERIDIAN_{name.upper()}: not a valid value (JSON expected){why}"
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        field = str(loc[0]) if loc else "settings"
        for part in loc[1:]:  # indexes and plain keys; not pydantic's validator names
            if isinstance(part, int):
                field += f"[{part}]"
            elif isinstance(part, str) and part.isidentifier():
                field += f".{part}"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not loc:  # a rule across settings: its message names the variables
            lines.append(f"  {msg}")
            continue
        lines.append(f"  {field} (MERIDIAN_{str(loc[0]).upper()}): {msg}")
    return f"invalid {source} settings (environment / .env):\n" + "\n".join(lines)


def load_topology(path: Path | str) -> Topology:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(f"{p}: cannot read regions file: {exc.strerror or exc}") from exc
    return parse_topology(text, source=str(p))
