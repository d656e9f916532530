"""The bad-input table of issue #16: every case of tests/test_bad_input.py as a real `python recipes/pretrain.py`
subprocess, with its exit status, the seconds until it stopped (interpreter start and imports included) and the
last line it printed; and whether anything in the case's world changed.

    python benchmarks/bad_input_table.py                 # a Markdown table on stdout
    python benchmarks/bad_input_table.py --only "max_steps 0" --only "empty data file"
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "tests"), os.path.join(REPO, "recipes")]  # the test's table and its helpers

from test_bad_input import CASES, RECIPE, make_world, snapshot  # noqa: E402


def run_case(world, argv: list[str]) -> tuple[int, float, list[str]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, RECIPE, *argv], env=env, capture_output=True, text=True, timeout=600, cwd=world.root
    )
    seconds = time.perf_counter() - start
    return result.returncode, seconds, [line for line in result.stderr.splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], help="Run only these cases (by name).")
    args = parser.parse_args()
    cases = [case for case in CASES if not args.only or case[0] in args.only]
    with tempfile.TemporaryDirectory() as root:
        world = make_world(root)
        print("| case | exit | seconds | stderr lines | world unchanged | the line shown |")
        print("|---|---|---|---|---|---|")
        for name, argv, _ in cases:
            before = snapshot(root)
            code, seconds, lines = run_case(world, argv(world))
            shown = (lines[-1] if lines else "").replace(root, "<world>").replace("|", "\\|")
            unchanged = "yes" if snapshot(root) == before else "NO"
            print(f"| {name} | {code} | {seconds:.1f} | {len(lines)} | {unchanged} | `{shown}` |", flush=True)


if __name__ == "__main__":
    main()
