"""The `meridian` command: CLI, demo launcher, local redis-server supervision (imports both sides)."""
