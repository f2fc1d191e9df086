"""STEGO as small, testable stages: one module per stage, each with pure functions and a thin CLI."""

# The one home of the version: pyproject.toml reads it from here (setuptools' dynamic version), so the
# checkout the workflow runs (often not installed, or installed from an older commit) reports its own
# version, not whatever an installed copy's metadata says. A release changes this line only.
__version__ = "0.1.0"
