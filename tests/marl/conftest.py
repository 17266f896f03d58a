"""Makes this directory's helper modules (``marl_toy_envs``, ``killed_runs``) importable under --import-mode=importlib."""

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
