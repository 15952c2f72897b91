"""`sparsedm ...` in a fresh process with FID's pooled-pixel stand-in; used by test_sweep_shards.

python shard_script.py ARGS...
"""

import sys

from fid_stub import PooledPixels

import sparsedm.eval.fid
from sparsedm.cli import main

if __name__ == "__main__":
    sparsedm.eval.fid.load_inception = lambda device="cpu": PooledPixels()
    sys.exit(main(sys.argv[1:]))
