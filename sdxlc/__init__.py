"""sdxlc: compile a compact training recipe into a fully resolved SDXL training plan."""

__version__ = "0.1.0"
