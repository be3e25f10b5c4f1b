"""`python -m meridian`: the `meridian` command.

Ctrl-C while it starts (its imports take a moment) ends it quietly, as Ctrl-C once it runs does:
status 130, no traceback."""

try:
    from meridian.cli import main

    raise SystemExit(main())
except KeyboardInterrupt:
    raise SystemExit(130) from None
