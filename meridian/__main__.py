"""`python -m meridian`: the `meridian` command (see meridian.cli); started by `fleet.entry.run`."""

from fleet.entry import run

run("meridian.cli")
