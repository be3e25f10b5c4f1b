"""`python -m controlplane`: run the control plane (see controlplane.main)."""

from controlplane.main import main

raise SystemExit(main())
