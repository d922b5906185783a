"""Fuzz the torch-free weight readers for longer than the test suite does.

    python scripts/fuzz_readers.py [--n 100000] [--seed 0] [--start 0]

Runs `fuzz` from tests/test_fuzz_readers.py, whose docstring describes the seed files, the
mutations and what every variant must do (load sound arrays or raise the reader's own error);
the test runs its first 2,500 variants of seed 0. Variant i depends on (seed, i) alone, so a
range replays with `--start i --n k`. Progress every 5%, then the outcome per seed file, the
first failures and a summary line. Every variant is read in this process: a crash ends the run
(faulthandler prints where) before the summary, so a summary means none happened. Exit status 1
if any variant failed.
"""

from __future__ import annotations

import argparse
import faulthandler
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_fuzz_readers import Tally, fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="how many variants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="index of the first variant")
    args = parser.parse_args()
    if args.n < 1 or args.start < 0:
        parser.error(f"--n must be >= 1 and --start >= 0 (got {args.n}, {args.start})")
    faulthandler.enable()
    start = time.perf_counter()
    every = max(1, args.n // 20)

    def progress(i: int, tally: Tally) -> None:
        done = i - args.start + 1
        if done % every == 0 or done == args.n:
            print(
                f"{done}/{args.n}: {sum(tally.loaded.values())} loaded, "
                f"{sum(tally.refused.values())} refused, {len(tally.failures)} failed, "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )

    tally = fuzz(args.n, args.seed, args.start, progress)
    seconds = time.perf_counter() - start
    for name in sorted(tally.loaded | tally.refused):
        print(f"  {name:24} {tally.loaded[name]:7} loaded {tally.refused[name]:7} refused")
    for failure in tally.failures[:50]:
        print(f"  FAILED {failure}")
    print(
        f"variants={tally.variants} loaded={sum(tally.loaded.values())} "
        f"refused={sum(tally.refused.values())} failed={len(tally.failures)} crashes=0 "
        f"seconds={seconds:.0f} seed={args.seed} start={args.start}"
    )
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
