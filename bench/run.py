"""Benchmark runner: ``python bench/run.py [--suite decorrelation] [--device cuda] [--full]``.

Same as ``sdecor bench``; prints the tables and writes bench/results/<device>.json and .md.
"""

import sys

from sdecor.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
