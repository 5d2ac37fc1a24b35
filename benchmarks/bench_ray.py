"""Ray on this machine: building classes and segmenting a folder, single process vs ``--ray local``.

1. Build: ``--classes`` tiny classes (tiny random-weight generator and extractor, ``--images`` images per
   class at ``--size`` px and ``--steps`` steps, so that generation dominates), in one process
   (``ProtoDB.add_vocab``) and through Ray with 1 and 2 workers (the same call with ``runner=RayOptions(...)``).
   Every run is a fresh Python process on a fresh database (the tiny models are built once beforehand and
   copied in), timed end to end: imports, Ray start, model loading, the work, shutdown.
2. Segment: ``--photos`` CamVid photos (``DIR/val`` of ``--camvid DIR``, default ``../shared/data/camvid``
   relative to the repository; skipped when absent; never copied anywhere) labelled with the built-in camvid
   vocabulary (support images from the tiny generator, features from the real DINOv2 ViT-S/14
   ``focus-vits14-torch``), by the single-process loop (``ProtoDB.segment``) and by Ray Data
   (``runner=RayOptions(...)``, 2 actors), end to end and the labelling alone.

    python benchmarks/bench_ray.py [--classes 8] [--images 8] [--size 128] [--steps 4] [--photos 50] [--json]
    python benchmarks/bench_ray.py --smoke [--camvid DIR]

``--smoke`` checks the script runs: 2 tiny classes of 2 images (64 px, 2 steps), single process vs Ray local
with 1 worker; 2 photos of DIR/val labelled with those 2 classes (tiny-vit), single process vs Ray Data with
1 actor. The "2 workers" / "2 actors" figures are then those of the 1-worker runs (``--workers``;
``ray_workers`` and ``ray_actors`` in the JSON say how many ran).

Goals (issue 11): the Ray path with 1 worker costs <= 1.15x the single-process time; 2 workers on 2 cores
approach 2x throughput on generation-heavy work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"

BUILD = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import protodb
    from protodb.pipeline.config import AddClassRequest
    home, mode, images, size, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    db = protodb.open(home)
    template = AddClassRequest("bench", images=images, size=size, steps=steps, batch_size=4)
    from protodb.runners import RayOptions
    runner = None if mode == "single" else RayOptions("local", workers=int(mode), shard_size=8)
    res = db.add_vocab("bench", template, preset="tiny", runner=runner)
    assert not res.failed, res.failed
    print(json.dumps({"seconds": time.perf_counter() - t0, "classes": len(res.classes),
                      "images": sum(c.generated_images for c in res.classes)}))
""")

SEGMENT = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import protodb
    from protodb.segment.options import SegmentOptions
    home, mode, out, vocab, extractor = sys.argv[1:6]
    photos = sys.argv[6:]
    db = protodb.open(home)
    opts = SegmentOptions(vocab=vocab, extractors=(extractor,))
    from protodb.runners import RayOptions
    runner = None if mode == "single" else RayOptions("local", workers=int(mode))
    rep = db.segment(photos, opts, out, runner=runner, batch_size=4)
    assert not rep.failed, rep.failed[:3]
    print(json.dumps({"seconds": time.perf_counter() - t0, "labelling": rep.seconds, "images": len(rep.outputs)}))
""")


def child_env() -> dict[str, str]:
    """This environment without the PROTODB_* variables that could redirect a step (home, catalog...); the
    user cache (PROTODB_CACHE) stays."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTODB_") or k == "PROTODB_CACHE"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def run(script: str, *args) -> dict:
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, check=False,
                         cwd=ROOT, env=child_env())
    if out.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cli(*args) -> None:
    out = subprocess.run([sys.executable, "-m", "protodb_cli.main", *map(str, args), "-q"], capture_output=True,
                         text=True, check=False, cwd=ROOT, env=child_env())
    if out.returncode != 0:
        raise SystemExit(f"protodb {' '.join(map(str, args))} failed:\n{out.stderr[-3000:]}")


def bench_build(tmp: Path, args) -> dict:
    import protodb

    template = tmp / "models-home"
    reg = protodb.open(template).registry("tiny")
    reg.generator_spec("tiny")
    reg.extractor_spec("tiny-vit")
    names = [f"class {i}" for i in range(args.classes)]
    out = {}
    many = str(args.workers)
    for mode in dict.fromkeys(("single", "1", many)):
        home = tmp / f"build-{mode}"
        shutil.copytree(template / "models", home / "models")
        cli("vocab", "create", "bench", *names, "--db", home)
        out[mode] = run(BUILD, home, mode, args.images, args.size, args.steps)
        print(f"  build {mode:>6}: {out[mode]['seconds']:.1f} s", file=sys.stderr)
    single = out["single"]["seconds"]
    return {"classes": args.classes, "images_per_class": args.images, "size": args.size, "steps": args.steps,
            "single_s": round(single, 2), "ray_1_worker_s": round(out["1"]["seconds"], 2),
            "ray_2_workers_s": round(out[many]["seconds"], 2), "ray_workers": args.workers,
            "ray_1_worker_cost": round(out["1"]["seconds"] / single, 3),
            "ray_2_workers_throughput": round(single / out[many]["seconds"], 3),
            "images_built": {mode: r["images"] for mode, r in out.items()}}


def bench_segment(tmp: Path, args) -> dict | None:
    val = args.camvid / "val"
    if not val.is_dir():
        print(f"  segment: skipped ({val} is absent)", file=sys.stderr)
        return None
    photos = sorted(val.glob("*.png"))[: args.photos]
    home = tmp / "segment"
    if args.smoke and (tmp / "build-single" / "catalog.sqlite").is_file():  # the tiny classes just built
        vocab, extractor = "bench", "tiny-vit"
        shutil.copytree(tmp / "build-single", home)
    elif args.smoke:  # a 2-class vocabulary of tiny-preset classes (support images from the tiny generator)
        vocab, extractor = "smoke", "tiny-vit"
        cli("vocab", "create", vocab, "class 0", "class 1", "--db", home)
        cli("add-vocab", vocab, "--preset", "tiny", "--images", "2", "--db", home)
    else:
        vocab, extractor = "camvid", "focus-vits14-torch"
        cli("add-vocab", vocab, "--preset", "tiny", "--images", "4", "--extractor", extractor, "--db", home)
    out = {}
    many = str(args.workers)
    for mode in ("single", many):
        out[mode] = run(SEGMENT, home, mode, tmp / f"out-{mode}", vocab, extractor, *photos)
        print(f"  segment {mode:>6}: {out[mode]['seconds']:.1f} s end to end", file=sys.stderr)
    n = len(photos)
    return {"photos": n, "extractor": extractor, "batch_size": 4, "ray_actors": args.workers,
            "single_s": round(out["single"]["seconds"], 2), "ray_2_actors_s": round(out[many]["seconds"], 2),
            "single_images_per_s": round(n / out["single"]["seconds"], 3),
            "ray_images_per_s": round(n / out[many]["seconds"], 3),
            "single_labelling_images_per_s": round(n / out["single"]["labelling"], 3),
            "ray_speedup": round(out["single"]["seconds"] / out[many]["seconds"], 3),
            "images_labelled": {mode: r["images"] for mode, r in out.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--photos", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2, help="Ray workers / actors of the second Ray run")
    ap.add_argument("--camvid", type=Path, default=CAMVID, help="CamVid root; DIR/val gives the photos")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--skip-segment", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="2 tiny classes x 2 images (64 px, 2 steps), 2 photos, Ray local with 1 worker: "
                         "checks the script runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.classes, args.images, args.size, args.steps, args.photos, args.workers = 2, 2, 64, 2, 2, 1
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        report = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
        if not args.skip_build:
            report["build"] = bench_build(Path(tmp), args)
        if not args.skip_segment:
            report["segment"] = bench_segment(Path(tmp), args)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["smoke"] = args.smoke
    if args.json:
        print(json.dumps(report, indent=2))
        return
    b, s = report.get("build"), report.get("segment")
    if b:
        print(f"build {b['classes']} classes x {b['images_per_class']} images ({b['size']} px, {b['steps']} steps): "
              f"single {b['single_s']} s | ray 1 worker {b['ray_1_worker_s']} s ({b['ray_1_worker_cost']}x) | "
              f"ray {b['ray_workers']} workers {b['ray_2_workers_s']} s ({b['ray_2_workers_throughput']}x throughput)")
    if s:
        print(f"segment {s['photos']} CamVid photos ({s['extractor']}): single {s['single_s']} s "
              f"({s['single_images_per_s']} img/s; labelling alone {s['single_labelling_images_per_s']} img/s) | "
              f"ray data {s['ray_actors']} actors {s['ray_2_actors_s']} s ({s['ray_images_per_s']} img/s, "
              f"{s['ray_speedup']}x)")


if __name__ == "__main__":
    main()
