"""`python -m sdxlc.cli`: the same as the `sdxlc` console script."""

from sdxlc.cli.main import entry

entry()
