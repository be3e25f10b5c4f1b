"""`python -m controlplane`: the `meridian` command."""

from controlplane.cli import main

raise SystemExit(main())
