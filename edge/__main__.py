"""`python -m edge`: run one edge (see edge.server.main); started by `fleet.entry.run`."""

from fleet.entry import run

run("edge.server.main")
