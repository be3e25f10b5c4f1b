"""`python -m edge`: run one edge (see edge.main)."""

from edge.main import main

raise SystemExit(main())
