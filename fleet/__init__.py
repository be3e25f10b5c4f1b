"""The contract both sides import: topology, state schema and Redis keys, Redis connections."""
