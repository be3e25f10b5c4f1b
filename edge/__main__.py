"""`python -m edge`: run one edge (see edge.server.main)."""

from edge.server.main import main

raise SystemExit(main())
