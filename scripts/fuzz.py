"""Run many more fuzzed stacks than CI does, and say how many ran and passed.

    python scripts/fuzz.py --examples 300      # about 2 s a stack on 2 cores

Draws stacks with the same strategy as tests/test_fuzz.py (cell, 1-3 layers, units 1-64, features 1-16,
lengths 1-50, batch 1-8, every flag, bidirectional, masking with a drawn mask of any shape, initial
states), but with a random seed, exports each and checks parity. Failures are printed with their
configuration (and mask) and kept going; the counts go to scripts/results/fuzz.json for README.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hypothesis import HealthCheck, given, settings  # noqa: E402
from strategies import stacks  # noqa: E402
from test_fuzz import check_stack  # noqa: E402

from toolkit.fileio import atomic_write_text  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "results" / "fuzz.json")
    args = parser.parse_args()
    counts = {"ran": 0, "passed": 0, "failures": []}
    start = time.time()

    @settings(max_examples=args.examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(stacks())
    def run(drawn):
        counts["ran"] += 1
        try:
            check_stack(*drawn)
            counts["passed"] += 1
        except Exception as exc:  # noqa: BLE001 - keep going: the point is the count, and every failure's configuration
            counts["failures"].append({"config": drawn[0].to_json(), "batch": drawn[1], "length": drawn[2],
                                       "mask": [[int(k) for k in row] for row in drawn[3]],
                                       "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            print(f"FAIL {drawn}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)

    run()
    counts["seconds"] = round(time.time() - start)
    print(f"{counts['ran']} ran, {counts['passed']} passed, {counts['ran'] - counts['passed']} failed "
          f"in {counts['seconds']} s")
    atomic_write_text(args.out, json.dumps(counts, indent=2) + "\n")


if __name__ == "__main__":
    main()
