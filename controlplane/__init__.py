"""Meridian control plane: admin API, health prober, and the shared state schema (kept import-light)."""
