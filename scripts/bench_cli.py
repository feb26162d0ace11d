"""Wall time of `bitrouter --help` and `bitrouter status`: median of N runs, printed as JSON.

Usage: python scripts/bench_cli.py [--runs N] [--bin PATH]
The target is under 150 ms each; "ok" says whether both wall-time medians meet it. CPU time
(user + system of the child) is reported too: on a busy machine it moves far less than wall
time. Runs in a throwaway home with the developer's keys removed from the environment, and
with bytecode caching on (as in any normal install) even if PYTHONDONTWRITEBYTECODE is set
here: otherwise every run would compile BitRouter's sources again.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MS = 150.0


def main() -> None:
    """Parse arguments, time each command, print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--bin", default=str(Path(sys.executable).with_name("bitrouter")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items()
               if not k.endswith("_API_KEY") and not k.startswith("BITROUTER")
               and k != "PYTHONDONTWRITEBYTECODE"}
        env["HOME"] = tmp
        commands = {"--help": [args.bin, "--help"], "status": [args.bin, "--home-dir", tmp, "status"]}
        results = {name: measure(argv, env, args.runs) for name, argv in commands.items()}
    print(json.dumps({"runs": args.runs, "target_ms": TARGET_MS, "commands": results,
                      "ok": all(r["median_ms"] < TARGET_MS for r in results.values())}, indent=2))


def measure(argv: list, env: dict, runs: int) -> dict:
    """Run argv once (page cache, bytecode cache), then `runs` times; statistics in ms."""
    run_once(argv, env)
    wall, cpu = zip(*(run_once(argv, env) for _ in range(runs)))
    return {"median_ms": round(statistics.median(wall), 1), "min_ms": round(min(wall), 1),
            "max_ms": round(max(wall), 1), "cpu_median_ms": round(statistics.median(cpu), 1)}


def run_once(argv: list, env: dict) -> tuple[float, float]:
    """Wall and CPU milliseconds for one run; a failing command aborts the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, cpu


if __name__ == "__main__":
    main()
