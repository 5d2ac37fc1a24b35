"""Start-up of the everyday commands: wall seconds of ``protodb --help``, ``ls``, ``info``, ``vocab list``
(median of N runs, each a fresh process) and of one ``segment`` of a photo: total wall vs the time the
command itself reports, i.e. what start-up (imports, model loading) costs.

    python benchmarks/bench_cli.py            # uses (or makes) demo-out/db via `protodb demo --quick`
    python benchmarks/bench_cli.py --runs 9 --json

Goal (issue 13): ls / info / vocab list under 0.6 s on the 2-core machine when it is quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXE = [sys.executable, "-m", "protodb_cli.main"]


def wall(args: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTODB_")}
    t = time.perf_counter()
    subprocess.run(EXE + args, capture_output=True, check=True, env=env, cwd=ROOT)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, default=ROOT / "demo-out" / "db")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not (args.db / "catalog.sqlite").is_file():
        subprocess.run(EXE + ["demo", "--quick", "--out", str(args.db.parent), "-q"], check=True, cwd=ROOT)
    db = ["--db", str(args.db)]
    out = {"load_average": os.getloadavg()[0]}
    for name, cmd in (("--help", ["--help"]), ("ls", ["ls", *db]), ("info", ["info", *db]),
                      ("vocab list", ["vocab", "list", *db])):
        wall(cmd)  # warm the file cache
        out[name] = round(statistics.median(wall(cmd) for _ in range(args.runs)), 3)
    photo = args.db.parent / "inputs" / "targets" / "motorcycle_right.png"
    if photo.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            seg = ["segment", str(photo), "--vocab", "demo", *db, "--out", tmp, "--json"]
            env = {k: v for k, v in os.environ.items() if not k.startswith("PROTODB_")}
            subprocess.run(EXE + seg, capture_output=True, check=True, env=env, cwd=ROOT)  # warm caches
            t = time.perf_counter()
            res = subprocess.run(EXE + seg, capture_output=True, check=True, env=env, cwd=ROOT, text=True)
            total = time.perf_counter() - t
            inner = json.loads(res.stdout)["seconds"]
        out["segment"] = {"wall_s": round(total, 2), "reported_s": inner, "startup_s": round(total - inner, 2)}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"load average {out['load_average']:.2f}; median of {args.runs} fresh processes:")
    for k in ("--help", "ls", "info", "vocab list"):
        print(f"  protodb {k:<12} {out[k]:.3f} s")
    if "segment" in out:
        s = out["segment"]
        print(f"  protodb segment (1 photo, demo vocabulary): {s['wall_s']} s wall, {s['reported_s']} s reported, "
              f"start-up {s['startup_s']} s")


if __name__ == "__main__":
    main()
