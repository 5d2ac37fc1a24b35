"""Start-up of the everyday commands: wall seconds of ``protodb --help``, ``ls``, ``info``, ``vocab list``
(median of N runs, each a fresh process) and of one ``segment`` of a photo: total wall vs the time the
command itself reports, i.e. what start-up (imports, model loading) costs.

    python benchmarks/bench_cli.py            # uses (or makes, with `protodb demo --quick`) a demo database in
                                              # the user cache (protodb.paths.user_cache_dir()/bench-cli/db)
    python benchmarks/bench_cli.py --db demo-out/db      # the database `make demo` made
    python benchmarks/bench_cli.py --runs 9 --json
    python benchmarks/bench_cli.py --smoke [--db DB --vocab NAME --photo FILE]   # checks it runs: 1 run each,
                                              # no warm-up; with no --db, a one-class tiny-preset database in a
                                              # temp folder

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


def child_env() -> dict[str, str]:
    """This environment without the PROTODB_* variables that could redirect the commands (home, catalog,
    logging...); the user cache (PROTODB_CACHE) stays, so nothing lands elsewhere than the caller asked."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PROTODB_") or k == "PROTODB_CACHE"}


def protodb(args: list[str], **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(EXE + args, capture_output=True, env=child_env(), cwd=ROOT, text=True, check=False, **kw)
    if out.returncode != 0:
        raise SystemExit(f"protodb {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out


def wall(args: list[str]) -> float:
    t = time.perf_counter()
    protodb(args)
    return time.perf_counter() - t


def tiny_db(folder: Path) -> tuple[Path, str, Path]:
    """(home, vocabulary, photo): one tiny-preset class, its vocabulary and a 64x48 photo, in ``folder``."""
    import PIL.Image

    home = folder / "db"
    protodb(["add-class", "red box", "--preset", "tiny", "--images", "2", "--db", str(home), "-q"])
    protodb(["vocab", "create", "smoke", "red box", "--db", str(home), "-q"])
    photo = folder / "photo.png"
    PIL.Image.new("RGB", (64, 48), (200, 30, 30)).save(photo)
    return home, "smoke", photo


def measure(args, tmp: Path) -> dict:
    db = ["--db", str(args.db)]
    out = {"load_average": os.getloadavg()[0]}
    for name, cmd in (("--help", ["--help"]), ("ls", ["ls", *db]), ("info", ["info", *db]),
                      ("vocab list", ["vocab", "list", *db])):
        if not args.smoke:
            wall(cmd)  # warm the file cache
        out[name] = round(statistics.median(wall(cmd) for _ in range(args.runs)), 3)
    photo = args.photo or args.db.parent / "inputs" / "targets" / "motorcycle_right.png"
    if photo.is_file():
        seg = ["segment", str(photo), "--vocab", args.vocab, *db, "--out", str(tmp / "segment"), "--json"]
        if not args.smoke:
            protodb(seg)  # warm caches
        t = time.perf_counter()
        res = protodb(seg)
        total = time.perf_counter() - t
        inner = json.loads(res.stdout)["seconds"]
        out["segment"] = {"wall_s": round(total, 2), "reported_s": inner, "startup_s": round(total - inner, 2)}
    out["smoke"] = args.smoke
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, default=None,
                    help="an existing database (default: the demo's, made once in the user cache)")
    ap.add_argument("--vocab", default="demo", help="the vocabulary segment uses")
    ap.add_argument("--photo", type=Path, default=None,
                    help="the photo segment labels (default: the demo's motorcycle_right.png next to its database)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--smoke", action="store_true",
                    help="1 run of each command, no warm-up run; with no --db, a tiny-preset database in a temp folder")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.runs = 1
    with tempfile.TemporaryDirectory(prefix="protodb-bench-cli-") as tmp:
        if args.db is None and args.smoke:
            args.db, args.vocab, photo = tiny_db(Path(tmp))
            args.photo = args.photo or photo
        elif args.db is None:
            from protodb.paths import user_cache_dir

            args.db = user_cache_dir() / "bench-cli" / "db"
        if not (args.db / "catalog.sqlite").is_file():
            protodb(["demo", "--quick", "--out", str(args.db.parent), "-q"])
        if args.photo is not None and not args.photo.is_file():
            raise SystemExit(f"--photo {args.photo}: no such file")
        out = measure(args, Path(tmp))
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"load average {out['load_average']:.2f}; median of {args.runs} fresh processes:")
    for k in ("--help", "ls", "info", "vocab list"):
        print(f"  protodb {k:<12} {out[k]:.3f} s")
    if "segment" in out:
        s = out["segment"]
        print(f"  protodb segment (1 photo, vocabulary {args.vocab}): {s['wall_s']} s wall, "
              f"{s['reported_s']} s reported, "
              f"start-up {s['startup_s']} s")


if __name__ == "__main__":
    main()
