"""Speed and memory benchmarks of Perceiver IO implementations (scripts; see docs/benchmarks.md)."""
