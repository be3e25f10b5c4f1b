"""How a component's ``python -m`` starts (I/O): import its ``main`` and run it. Ctrl-C while it starts (its
imports take a moment) ends it quietly, as Ctrl-C once it runs does: status 130, no traceback."""

from __future__ import annotations

import importlib
from typing import NoReturn


def run(module: str) -> NoReturn:
    """Run ``module``'s ``main()`` (named by its dotted path, imported here so Ctrl-C during it is caught)."""
    try:
        main = importlib.import_module(module).main
        raise SystemExit(main())
    except KeyboardInterrupt:
        raise SystemExit(130) from None
