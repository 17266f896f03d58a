"""``python tests/experiments/walk_cli.py ARGS``: the experiments CLI with the test kind registered.

The signal and lock tests run the CLI as a real process (a signal must reach a real process),
on the tiny ``test_walk`` kind that conftest.py registers.
"""

import sys

import conftest  # noqa: F401  (registers test_walk; this file's folder is sys.path[0])

from experiments.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
