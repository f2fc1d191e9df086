"""STEGO as small, testable stages: one module per stage, each with pure functions and a thin CLI."""

__version__ = "0.1.0"
