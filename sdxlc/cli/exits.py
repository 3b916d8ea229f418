"""The exit codes of every `sdxlc` command (README, "Exit codes")."""

EXIT_OK = 0
EXIT_RECIPE = 1  # recipe errors, each reported with its place
EXIT_USAGE = 2  # usage errors: bad options, a file that is not what the command takes
EXIT_RUN = 3  # the run or command failed (a changed input, a full disk, a damaged file)
EXIT_INTERNAL = 70  # a bug: a one-line report, never a traceback
