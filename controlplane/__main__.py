"""`python -m controlplane`: run the control plane (see controlplane.main).

Ctrl-C while it starts (its imports take a moment) ends it quietly, as Ctrl-C once it runs does:
status 130, no traceback."""

try:
    from controlplane.main import main

    raise SystemExit(main())
except KeyboardInterrupt:
    raise SystemExit(130) from None
