"""How long ``ehrfm --help`` and ``ehrfm <stage> --help`` take, and what they import.

Runs each command N times in a fresh interpreter (the console script's own cost: interpreter start, imports,
parser build) and records the median wall time and the heavy libraries loaded. Writes
``bench/results/cli_help.json`` and prints a table.

    python bench/cli_help.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ["torch", "pyspark", "mlflow", "lightning", "sklearn", "pandas", "numpy", "pyarrow"]
PROBE = ("import sys, runpy, json\nsys.argv = ['ehrfm'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('ehrfm.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr)\n")


def measure(argv: list[str], repeats: int) -> dict[str, object]:
    """Median wall seconds of ``ehrfm <argv>`` in a fresh interpreter, and the heavy modules it loaded."""
    times, loaded = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - t0)
        loaded = json.loads(out.stderr.strip().splitlines()[-1])
    return {"command": "ehrfm " + " ".join(argv), "median_s": round(statistics.median(times), 3),
            "min_s": round(min(times), 3), "heavy_imports": loaded}


def main() -> None:
    """Measure, print, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from ehrfm.cli import STAGES

    rows = ([measure(["--help"], args.repeats)] + [measure([*s.name.split(), "--help"], args.repeats)
                                                   for s in STAGES])
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    interp = (time.perf_counter() - t0) / args.repeats
    out = Path(__file__).parent / "results" / "cli_help.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"python_startup_s": round(interp, 3), "rows": rows}, indent=1))
    print(f"{'command':<32}{'median s':>10}{'min s':>8}  heavy imports   (python start-up {interp:.3f} s)")
    for r in rows:
        print(f"{r['command']!s:<32}{r['median_s']!s:>10}{r['min_s']!s:>8}  {r['heavy_imports'] or '-'}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
