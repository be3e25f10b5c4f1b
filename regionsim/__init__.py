"""A simulated regional LLM cluster (OpenAI-compatible) for demo, tests and benchmarks; never production."""
