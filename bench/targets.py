"""Issue 7's GPU targets: ``python bench/targets.py RESULTS.json`` prints the table and writes
``<stem>-targets.md`` beside the JSON. ``--merge OUT.json A.json B.json`` merges runs first;
``--run`` measures only the target settings first. See ``sdecor/benchmarks/targets.py``.
"""

import sys

from sdecor.benchmarks.targets import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
