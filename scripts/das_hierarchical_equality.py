"""Reproduces DAS on the hierarchical equality task (Geiger et al. 2023) and prints the table.

    .venv/bin/python scripts/das_hierarchical_equality.py            # full size, ~1-2 min on 2 cores
    .venv/bin/python scripts/das_hierarchical_equality.py --small    # the size the fast test uses
"""

from __future__ import annotations

import argparse
import time

from das_train.training.equality_experiment import FULL, SMALL, das_table, format_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="the smaller version the test runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    rows = das_table(SMALL if args.small else FULL, seed=args.seed)
    print(format_table(rows))
    print(f"\n{time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
