"""``python -m mixir.cli``: the same command as ``python -m mixir`` and ``mixir``."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
