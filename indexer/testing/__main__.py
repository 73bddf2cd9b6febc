"""``python -m indexer.testing ARGS...``: the real ``indexer`` command, with a
:class:`~indexer.testing.FaultInjector` around its embedder when
``INDEXER_TEST_FAIL_MARKER`` is set.

The entry point is a module of its own so that :mod:`indexer.testing` (the fakes the
unit tests import) never imports the CLI: the CLI loads the bench, and no chain of
imports may lead from the CLI back to the CLI.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from indexer.cli import main as cli_main
from indexer.embedding import load_embedder
from indexer.testing import fault_injecting


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(argv, load=fault_injecting(load_embedder))


if __name__ == "__main__":
    sys.exit(main())
