"""Simulation harness: the simulated host and scenario scripts (not part of the package)."""
