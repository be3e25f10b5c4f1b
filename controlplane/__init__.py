"""Meridian control plane: admin API, health prober, observation intake, store writes (imports only fleet)."""
