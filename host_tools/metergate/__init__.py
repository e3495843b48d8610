"""Metergate host tools: provisioning, bench (simulator, virtual board), back office, scoring."""

__version__ = "0.1.0"
