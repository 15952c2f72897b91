import sys

from sparsedm.cli import main

# guarded: sweep workers are spawned processes, which import the parent's main module again
if __name__ == "__main__":
    sys.exit(main())
