"""``python -m indexer.cli ARGS...``: the same as the ``indexer`` console script (tests
and benchmarks run the command this way, with the interpreter they run under).
"""

from __future__ import annotations

import sys

from indexer.cli import main

if __name__ == "__main__":
    sys.exit(main())
