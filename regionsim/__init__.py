"""A simulated regional LLM cluster (OpenAI-compatible) for the demo, tests and benchmarks; never production."""
