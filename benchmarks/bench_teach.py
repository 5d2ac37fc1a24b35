"""Teach by example on real photos: a CamVid class corrected on a few train photos, IoU on val before and after.

1. builds the 11 CamVid classes from ``--shots`` train photos each (the photos where the class covers the
   most pixels, the label maps as masks; exemplar mode, as ``bench_camvid.py`` but few-shot): version 1;
2. corrects ``--class`` on ``--corrections`` other train photos (those where it covers the most pixels
   among the rest), as a user would on the segment page: ``full`` paints every pixel of the class (from
   the label map), ``missed`` only the pixels of the class version 1 labelled as something else;
3. rebuilds the class from its support plus the corrections (``protodb teach``'s rebuild): version 2;
4. scores ``val`` (``--limit`` photos, no background, void ignored) with the class at version 1 and at
   version 2, the other classes unchanged: per-class IoU, mIoU and the change.

    python benchmarks/bench_teach.py                          # pedestrian, 3 shots, 4 corrections, 30 val photos
    python benchmarks/bench_teach.py --class car --modes full --limit 101 --json
    python benchmarks/bench_teach.py --smoke --camvid DIR     # the tiny preset's random-weight ViT, 1 correction,
                                                              # 2 val photos: checks the script runs

``--json`` prints ``{"class", "extractor", "shots", "corrections", "images", "results": [one row per mode:
{"mode", "pixels", "photos", "before", "after", "change", "miou_before", "miou_after", "per_class_before",
"per_class_after", "rebuild_s", "cpu_s"}], "cpu", "threads", "device", "dtype", "wall_s", "cpu_s", "smoke"}``
(IoU in percent).

The photos are read in place and the label maps copied only into a temporary folder (CamVid is CC BY-NC).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image

import protodb
from protodb.device import choose_device, choose_dtype, dtype_name
from protodb.images import load_image
from protodb.pipeline.config import AddClassRequest
from protodb.segment.metrics import MIoU
from protodb.segment.options import SegmentOptions

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"
NAMES = ("sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence", "car", "pedestrian",
         "bicyclist")
VOID = 11


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def label_map(camvid: Path, split: str, name: str) -> np.ndarray:
    return np.asarray(PIL.Image.open(camvid / f"{split}annot" / name))


def prepare(camvid: Path, work: Path, shots: int, target: str, n_corr: int):
    """Exemplar folders per class (its ``shots`` best train photos, symlinked, with their label maps) and the
    train photos to correct ``target`` on: the best ``n_corr`` of those not among its shots."""
    maps = {p.name: label_map(camvid, "train", p.name) for p in sorted((camvid / "train").glob("*.png"))}
    folders = {}
    for value, name in enumerate(NAMES):
        ranked = [n for n in sorted(maps, key=lambda n: -(maps[n] == value).sum()) if (maps[n] == value).any()]
        ex, mk = work / f"c{value}" / "ex", work / f"c{value}" / "mk"
        ex.mkdir(parents=True), mk.mkdir(parents=True)
        for n in ranked[:shots]:
            (ex / n).symlink_to(camvid / "train" / n)
            PIL.Image.fromarray(maps[n]).save(mk / n)
        folders[name] = (ex, mk, ranked)
    value = NAMES.index(target)
    correct = folders[target][2][shots:shots + n_corr]
    return folders, [(camvid / "train" / n, maps[n] == value) for n in correct]


def build(home: Path, folders, extractor: str, preset: str | None) -> None:
    with protodb.open(home) as db:
        builder = db.builder(preset=preset)
        for value, name in enumerate(NAMES):  # no background label: bg prototypes are not built from the rest
            ex, mk, _ = folders[name]
            builder.add_class(AddClassRequest(name=name, images=0, exemplars=ex, masks=mk, mask_value=value,
                                              bg_value=None, extractors=(extractor,), kind=None))


def evaluate(db, target_ref: str, camvid: Path, limit: int | None, preset: str | None) -> dict:
    classes = ",".join(target_ref if n == target_ref.split("@")[0] else n for n in NAMES)
    seg = db.segmenter(SegmentOptions(classes=classes, background=False, preset=preset))
    metric = MIoU(len(NAMES), ignore_index=255, names=list(NAMES))
    for p in sorted((camvid / "val").glob("*.png"))[:limit]:
        gt = label_map(camvid, "val", p.name).astype(np.int64)
        metric.update(seg.segment(load_image(p)).labels.astype(np.int64), np.where(gt == VOID, 255, gt))
    res = metric.result()
    per = {k: (None if v is None else round(100 * v, 2)) for k, v in res["per_class"].items()}
    return {"miou": round(100 * res["miou"], 2), "per_class": per}


def run_mode(home: Path, mode: str, target: str, photos, camvid: Path, limit: int | None,
             preset: str | None, before: dict) -> dict:
    cpu0 = time.process_time()
    value = NAMES.index(target)
    pixels, used = 0, 0
    with protodb.open(home) as db:
        seg = db.segmenter(SegmentOptions(background=False, classes=",".join(NAMES), preset=preset)) \
            if mode == "missed" else None
        for path, truth in photos:
            mask = truth
            if seg is not None:  # only what version 1 got wrong
                mask = truth & (seg.segment(load_image(path)).labels != value)
            if not mask.any():
                continue
            db.corrections.add(path, mask=mask.astype(np.uint8) * 255, class_name=target, author=f"bench {mode}")
            pixels += int(mask.sum())
            used += 1
        t = time.perf_counter()
        built = db.rebuild_with_corrections(target, preset=preset)
        rebuild_s = time.perf_counter() - t
        after = evaluate(db, built.sets[0].set.ref, camvid, limit, preset)
    b, a = before["per_class"][target], after["per_class"][target]
    return {"mode": mode, "pixels": pixels, "photos": used, "version": built.sets[0].set.version,
            "before": b, "after": a, "change": None if a is None or b is None else round(a - b, 2),
            "miou_before": before["miou"], "miou_after": after["miou"],
            "per_class_before": before["per_class"], "per_class_after": after["per_class"],
            "rebuild_s": round(rebuild_s, 1), "cpu_s": round(time.process_time() - cpu0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--camvid", type=Path, default=CAMVID)
    ap.add_argument("--class", dest="target", default="pedestrian", choices=NAMES)
    ap.add_argument("--shots", type=int, default=3, help="train photos per class for version 1")
    ap.add_argument("--corrections", type=int, default=4, help="train photos the class is corrected on")
    ap.add_argument("--limit", type=int, default=30, help="val photos scored (101: all)")
    ap.add_argument("--modes", nargs="*", default=["full", "missed"], choices=["full", "missed"])
    ap.add_argument("--extractor", default="focus-vits14-torch",
                    help="a built-in extractor, or tiny-vit (the tiny preset's random-weight ViT)")
    ap.add_argument("--smoke", action="store_true",
                    help="1 shot, 1 correction, 2 val photos, tiny-vit: checks the script runs "
                         "(figures not meaningful)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.shots, args.corrections, args.limit, args.extractor = 1, 1, 2, "tiny-vit"
    if not args.camvid.exists():
        raise SystemExit(f"CamVid not found at {args.camvid}")
    preset = "tiny" if args.extractor == "tiny-vit" else None
    t0, cpu0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="protodb-teach-") as tmp:
        work = Path(tmp)
        folders, photos = prepare(args.camvid, work / "exemplars", args.shots, args.target, args.corrections)
        base = work / "db-base"
        build(base, folders, args.extractor, preset)
        with protodb.open(base) as db:
            before = evaluate(db, f"{args.target}@1", args.camvid, args.limit, preset)
        results = []
        for mode in args.modes:
            home = work / f"db-{mode}"
            shutil.copytree(base, home, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
            results.append(run_mode(home, mode, args.target, photos, args.camvid, args.limit, preset, before))
    images = len(sorted((args.camvid / "val").glob("*.png"))[:args.limit])
    out = {"class": args.target, "extractor": args.extractor, "shots": args.shots, "corrections": len(photos),
           "images": images, "results": results, "cpu": cpu_model(), "threads": os.environ.get("OMP_NUM_THREADS"),
           "device": str(choose_device("auto")), "dtype": dtype_name(choose_dtype(choose_device("auto"), "auto")),
           "wall_s": round(time.perf_counter() - t0, 1),
           "cpu_s": round(time.process_time() - cpu0, 1), "smoke": args.smoke}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"CamVid {args.target}: {args.shots} shots per class, corrected on {len(photos)} train photos, "
          f"{args.extractor}, {images} val photos (IoU %)")
    for r in results:
        print(f"  {r['mode']:<7} {r['photos']} photos, {r['pixels']} px: {args.target} {r['before']} -> {r['after']} "
              f"({r['change']:+}) | mIoU {r['miou_before']} -> {r['miou_after']} | rebuild {r['rebuild_s']} s")


if __name__ == "__main__":
    main()
