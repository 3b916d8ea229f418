"""The `sdxlc` command line: one module per group of commands, plus the plan report and the launcher.

The top of the compiler: may import every stage. Imports the training runtime (`runtime`) only inside
the commands that run torch (`run`, `cache`, `gen`, `plan --exact`), after the plan is resolved.
"""
