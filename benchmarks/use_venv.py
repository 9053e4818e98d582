"""
Run a benchmark script with the project's venv when the Python it was
started with has no Twisted (``python benchmarks/hubs.py`` from a shell
without the venv active).  Imported first, before anything that needs
Twisted.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: Set in the re-executed process, so that a venv without Twisted does
#: not loop.
_MARKER = "POTHEAD_BENCH_REEXEC"

if importlib.util.find_spec("twisted") is None and not os.environ.get(_MARKER):
    for candidate in (REPO / ".venv" / "bin" / "python", Path("/work/venv/bin/python")):
        if candidate.exists():
            os.environ[_MARKER] = "1"
            os.execv(str(candidate), [str(candidate), *sys.argv])
