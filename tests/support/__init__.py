"""Test scaffolding: slow reference implementations and fake inputs (tests and benchmarks only)."""
