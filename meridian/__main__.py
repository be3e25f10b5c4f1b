"""`python -m meridian`: the `meridian` command."""

from meridian.cli import main

raise SystemExit(main())
