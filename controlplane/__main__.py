"""`python -m controlplane`: run the control plane (see controlplane.main); started by `fleet.entry.run`."""

from fleet.entry import run

run("controlplane.main")
