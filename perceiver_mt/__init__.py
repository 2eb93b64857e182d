"""Multi-task Perceiver IO training."""
