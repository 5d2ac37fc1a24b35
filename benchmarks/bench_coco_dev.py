"""Cluttered real photos: few-shot exemplar classes on the COCO dev split, scored with a background class.

1. every class labelled in both halves of ``../shared/data/coco-dev`` (read its README) gets one set, built
   from the support photos that show it, the label maps as masks (the API equivalent of ``protodb add-class
   NAME --images 0 --exemplars support/images --masks support/labels --mask-value V``; pixels labelled 0 are
   the exemplars' background, other labelled objects are neither);
2. the eval photos are segmented with those classes and the background class on; pixels of classes outside
   the vocabulary are ignored, as ``protodb eval`` ignores void;
3. prints mIoU over the classes + background, the background IoU, the thing classes' mIoU, per-class IoU,
   seconds per photo and every setting used.

    python benchmarks/bench_coco_dev.py --json                 # the recommended extractor (focus-vits14-tiles-flip-l4)
    python benchmarks/bench_coco_dev.py --extractor focus-vits14   # the ONNX DINOv2 itself, 224 crops
    python benchmarks/bench_coco_dev.py --smoke --json --data DIR   # tiny random-weight ViT, 2 eval photos
    python benchmarks/bench_coco_dev.py --choose --bg-margins 0 0.05 0.1 --votes 1 4   # choose, then eval once
    python benchmarks/bench_coco_dev.py --scales 1,1.5   # every window also at 1.5x the short side (small objects)
    python benchmarks/bench_coco_dev.py --augment zoom   # support views: two 2/3 crops of every support photo

Matching settings (``protodb segment --bg-margin M --vote N``): every combination of ``--bg-margins`` and
``--votes`` is scored. With ``--choose`` they are scored on the support half split in two (the sets built from
the even-numbered support photos, in name order, score the odd-numbered ones; only classes with pixels in both
parts), the best mIoU there is chosen, and the eval half is scored once with it. Without ``--choose`` the eval
half is scored with each combination (a sweep on the eval half: for looking, not for choosing).

The database (sets, support features) is kept in the user cache (``protodb.paths.user_cache_dir()
/bench-coco-dev``, ``--db`` to choose), and every extractor call on the eval photos is cached there by the
crop's content (float16, as the feature cache stores support features), so a second run of other matching
settings costs the matching only; ``--no-cache`` recomputes. The seconds per photo of a cached run are the
matching's: the JSON says how many extractor calls came from the cache.

``--json`` prints ``{"data", "extractor", "classes", "support_photos", "eval_photos", "miou",
"background_iou", "thing_miou", "per_class", "seconds_per_photo", "cpu_seconds_per_photo", "build_s",
"extractor_calls", "cached_calls", "settings", "build", "machine", "sweep", "choice", "smoke"}``; IoUs in
percent; the top-level figures are the first combination's (with ``--choose``: the chosen one's), ``sweep``
one row per combination on the half scored, ``choice`` (``--choose``) the support-split rows and the choice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

import protodb
from protodb.images import load_image
from protodb.paths import user_cache_dir
from protodb.features.windows import WindowSpec
from protodb.pipeline.config import AddClassRequest
from protodb.pipeline.views import VIEWS
from protodb.segment.metrics import MIoU
from protodb.segment.options import SegmentOptions, parse_scales

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "coco-dev"
VOCAB = "coco-dev"
IGNORE = 255


def vocabulary(data: Path) -> list[tuple[str, int]]:
    """(class name, label value) of every class present in both halves, in label order."""
    meta = json.loads((data / "classes.json").read_text())
    present = meta["present"]
    both = set(present["support"]) & set(present["eval"])
    return [(name, int(v)) for v, name in sorted(meta["labels"].items(), key=lambda kv: int(kv[0])) if name in both]


def relabel(raw: np.ndarray, values: list[int]) -> np.ndarray:
    """Label map (0 background, COCO index + 1) -> vocabulary index space: class i -> i, background -> C,
    any other class -> 255 (ignored)."""
    lut = np.full(65536 if raw.dtype != np.uint8 else 256, IGNORE, np.int64)
    lut[0] = len(values)
    for i, v in enumerate(values):
        lut[v] = i
    return lut[raw.astype(np.int64)]


class CachedCalls:
    """An extractor whose calls are memoised on disk by the crops' bytes (float16 features, returned as
    float32 on both the first and the later calls, so a cached run labels exactly as the first one did)."""

    def __init__(self, extractor, folder: Path | None):
        self._inner, self._folder = extractor, folder
        self.calls = self.hits = 0
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        key = hashlib.sha256(crops.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:32]
        return self._memo(key, lambda: self._inner(crops))

    def window_features(self, image: torch.Tensor, windows) -> list[torch.Tensor]:
        """All windows of one photo at once (what segment calls: shared tiles), memoised the same way."""
        digest = hashlib.sha256(image.detach().cpu().contiguous().numpy().tobytes())
        digest.update(repr([(w.top, w.left, w.height, w.width) for w in windows]).encode())
        return list(self._memo("w" + digest.hexdigest()[:32], lambda: self._inner.window_features(image, windows)))

    def _memo(self, key: str, compute):
        """``compute()`` (a tensor or a list of tensors) through the on-disk memo, float16 on disk."""
        self.calls += 1
        if self._folder is None:
            return compute()
        path = self._folder / f"{key}.pt"
        if path.exists():
            try:
                self.hits += 1
                found = torch.load(path)
                return found.float() if isinstance(found, torch.Tensor) else [t.float() for t in found]
            except Exception:  # noqa: BLE001 - a torn file is recomputed
                self.hits -= 1
        out = compute()
        half = (out.detach().cpu().to(torch.float16) if isinstance(out, torch.Tensor)
                else [t.detach().cpu().to(torch.float16) for t in out])
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(half, tmp)
        os.replace(tmp, path)
        return half.float() if isinstance(half, torch.Tensor) else [t.float() for t in half]


def build(db, images: Path, labels: Path, classes: list[tuple[str, int]], extractor: str, preset: str | None,
          min_fraction: float, k: int | None, augment: tuple[str, ...] = ()) -> float:
    builder = db.builder(preset=preset)  # models load once for all classes
    t = time.perf_counter()
    for name, value in classes:
        builder.add_class(AddClassRequest(name=name, images=0, exemplars=images, masks=labels, mask_value=value,
                                          bg_value=0, extractors=(extractor,), k=k, mask_min_fraction=min_fraction,
                                          augment=augment))
    db.vocabs.create(VOCAB, [n for n, _ in classes], description="COCO dev split from exemplars", replace=True,
                     background=True)
    return time.perf_counter() - t


def score(db, extractor: str, levels: str, classes: list[tuple[str, int]], images: list[Path], labels: Path,
          cache: Path | None, bg_margin: float, vote: int, windows: WindowSpec | None = None) -> dict:
    """Segment ``images`` (label maps in ``labels`` by stem) with the vocabulary and the background class,
    through ``windows`` (default: the extractor's own)."""
    opts = SegmentOptions(vocab=VOCAB, extractors=(extractor,), levels=levels.split(","), background=True,
                          bg_margin=bg_margin, vote=vote, windows=windows or WindowSpec())
    seg = db.segmenter(opts)
    cached = {}
    for e, ext in list(seg.extractors.items()):
        seg.extractors[e] = cached[e] = CachedCalls(ext, None if cache is None else cache / e)
    names = [n for n, _ in classes] + ["background"]
    values = [v for _, v in classes]
    metric = MIoU(len(names), ignore_index=IGNORE, names=names)
    wall = cpu = 0.0
    for p in images:
        gt = relabel(np.asarray(PIL.Image.open(labels / f"{p.stem}.png")), values)
        image = load_image(p)
        t, c = time.perf_counter(), time.process_time()
        pred = seg.segment(image, p.name).labels
        wall, cpu = wall + time.perf_counter() - t, cpu + time.process_time() - c
        metric.update(pred.astype(np.int64), gt)
    res = metric.result()
    per = {k: (None if v is None else round(100 * v, 2)) for k, v in res["per_class"].items()}
    things = [v for k, v in per.items() if k != "background" and v is not None]
    return {"bg_margin": bg_margin, "vote": vote, "miou": round(100 * res["miou"], 2),
            "background_iou": per["background"], "thing_miou": round(sum(things) / len(things), 2) if things else None,
            "per_class": per, "photos": len(images), "seconds_per_photo": round(wall / len(images), 3),
            "cpu_seconds_per_photo": round(cpu / len(images), 3),
            "extractor_calls": sum(c.calls for c in cached.values()),
            "cached_calls": sum(c.hits for c in cached.values()), "settings": seg.settings.to_dict()}


def maskcut_rules(db, data: Path, rules: list[str]) -> dict:
    """MaskCut's affinity threshold on the support photos' own (cached) features: per rule (``0.2``, ``p80``,
    ...) the share of patch pairs that are edges, the first normalised-cut mask's IoU with the fixed rule's
    (``rules[0]``; an empty first mask counts 0), and its best IoU with a labelled object (the label map on
    the patch grid, half-covered patches in), means over the photos."""
    from safetensors.torch import load_file
    from sqlalchemy import select

    from protodb.catalog.schema import SupportImageRow
    from protodb.pipeline.masks import ncut_segments, parse_tau, resolve_tau
    from protodb.pipeline.support_masks import to_grid

    with db.session() as sess:
        origins = {r.origin: r.artifact_sha256 for r in sess.scalars(select(SupportImageRow))}
    rows = {r: {"edges": [], "agreement": [], "object_iou": [], "empty": 0} for r in rules}
    photos = 0
    for p in sorted((data / "support" / "images").glob("*.jpg")):
        files = sorted((db.stores.cache_dir / "features").glob(f"*/{origins.get(p.name, '-')}_*.safetensors"))
        if not files:
            continue
        photos += 1
        f = load_file(str(files[0]))["feats"].float().numpy()
        f /= np.linalg.norm(f, axis=-1, keepdims=True)
        grid = f.shape[:2]
        flat = f.reshape(-1, f.shape[-1])
        cos = (flat @ flat.T)[np.triu_indices(flat.shape[0], k=1)]
        lab = np.asarray(PIL.Image.open(data / "support" / "labels" / f"{p.stem}.png"))
        objects = [to_grid(lab == v, grid, 0.5) for v in np.unique(lab) if v != 0]
        firsts = {}
        for r in rules:
            segs = ncut_segments(f, tau=parse_tau(r))
            first = segs[0] if segs else np.zeros(grid, bool)
            firsts[r] = first
            row = rows[r]
            row["edges"].append(float((cos > resolve_tau(flat, parse_tau(r))).mean()))
            row["empty"] += int(not first.any())
            ref = firsts[rules[0]]
            union = (first | ref).sum()
            row["agreement"].append(float((first & ref).sum() / union) if union else 1.0)
            ious = [float((first & o).sum() / max(1, (first | o).sum())) for o in objects if o.any()]
            row["object_iou"].append(max(ious) if ious else 0.0)
    out = {"photos": photos, "reference": rules[0], "rules": {}}
    for r, row in rows.items():
        out["rules"][r] = {"edge_share": round(float(np.mean(row["edges"])), 3) if photos else None,
                           "first_mask_agreement": round(float(np.mean(row["agreement"])), 3) if photos else None,
                           "first_mask_object_iou": round(float(np.mean(row["object_iou"])), 3) if photos else None,
                           "empty_first_masks": row["empty"]}
    return out


def support_split(data: Path, classes: list[tuple[str, int]], work: Path) -> tuple[Path, list[Path], list]:
    """Support photos in name order: the even-numbered ones as exemplars (symlinked into ``work``), the
    odd-numbered ones to score; the classes with pixels in both parts."""
    photos = sorted((data / "support" / "images").glob("*.jpg"))
    build_part, score_part = photos[0::2], photos[1::2]
    (work / "images").mkdir(parents=True, exist_ok=True)
    for p in build_part:
        if not (work / "images" / p.name).exists():
            (work / "images" / p.name).symlink_to(p)

    def values_in(part):
        return set().union(*(np.unique(np.asarray(PIL.Image.open(data / "support" / "labels" / f"{p.stem}.png")))
                             .tolist() for p in part))
    both = values_in(build_part) & values_in(score_part)
    return work / "images", score_part, [(n, v) for n, v in classes if v in both]


def machine() -> dict:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="the coco-dev folder (support/, eval/, classes.json)")
    ap.add_argument("--db", type=Path, default=None, help="database folder (default: in the user cache)")
    ap.add_argument("--extractor", default="focus-vits14-tiles-flip-l4", help="a built-in extractor, or tiny-vit (the tiny "
                    "preset's random-weight ViT)")
    ap.add_argument("--levels", default="class,instance,part")
    ap.add_argument("-k", type=int, default=None, help="part prototypes per class (default: the build's rule)")
    ap.add_argument("--mask-min-fraction", type=float, default=0.5)
    ap.add_argument("--augment", nargs="*", default=[], choices=sorted(VIEWS),
                    help="more views of each support photo (add-class --augment): zoom, light")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N eval photos")
    ap.add_argument("--split", default="eval", help="the half scored (eval; support scores the photos the "
                    "prototypes came from: an upper bound, not a result)")
    ap.add_argument("--no-cache", action="store_true", help="do not memoise the extractor calls on eval photos")
    ap.add_argument("--bg-margins", nargs="+", type=float, default=[0.0], help="background margins to score")
    ap.add_argument("--votes", nargs="+", type=int, default=[1], help="kNN votes to score")
    ap.add_argument("--scales", default="1", help="segment every window at these multiples of the short side "
                    "and average the score maps (e.g. 1,1.5: small objects get more patches); support features "
                    "stay at the short side")
    ap.add_argument("--short-side", type=int, default=None, help="segment's short side (default: protodb's, 448)")
    ap.add_argument("--maskcut-rules", nargs="*", default=[], help="also compare MaskCut affinity rules on the "
                    "support photos' cached features (first the reference, e.g. 0.2 p50 p80 p90)")
    ap.add_argument("--choose", action="store_true", help="choose the margin and vote on the support half split "
                    "in two, then score the eval half once with the choice")
    ap.add_argument("--smoke", action="store_true", help="tiny-vit, 2 eval photos: checks the script runs "
                    "(figures not meaningful)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.extractor, args.limit = "tiny-vit", 2
    if not (args.data / "classes.json").is_file():
        raise SystemExit(f"the COCO dev split is not at {args.data} (support/, eval/, classes.json): nothing to "
                         "measure; pass --data DIR")
    preset = "tiny" if args.extractor == "tiny-vit" else None
    try:
        side = {} if args.short_side is None else {"short_side": args.short_side}
        windows = WindowSpec(scales=parse_scales(args.scales), **side).check()
    except protodb.InvalidInput as e:
        raise SystemExit(f"error: {e}") from None
    classes = vocabulary(args.data)
    if not classes:
        raise SystemExit(f"no class of {args.data / 'classes.json'} is present in both halves")
    home = args.db or user_cache_dir() / "bench-coco-dev" / ("smoke" if args.smoke else args.extractor)
    cache = None if args.no_cache else home / "cache" / "eval-calls"
    combos = [(m, v) for m in args.bg_margins for v in args.votes]
    choice = None
    if args.choose:  # a second database over the same feature cache: the support features are computed once
        part_home = home.parent / f"{home.name}-support-split"
        (home / "cache").mkdir(parents=True, exist_ok=True)
        (home / "cache" / "features").mkdir(exist_ok=True)
        (part_home / "cache").mkdir(parents=True, exist_ok=True)
        if not (part_home / "cache" / "features").exists():
            (part_home / "cache" / "features").symlink_to(home / "cache" / "features")
        images, scored, part_classes = support_split(args.data, classes, part_home / "split")
        part_db = protodb.open(part_home)
        build(part_db, images, args.data / "support" / "labels", part_classes, args.extractor, preset,
              args.mask_min_fraction, args.k, tuple(args.augment))
        rows = [score(part_db, args.extractor, args.levels, part_classes, scored[:args.limit],
                      args.data / "support" / "labels", cache, m, v, windows) for m, v in combos]
        best = max(rows, key=lambda r: r["miou"])
        combos = [(best["bg_margin"], best["vote"])]
        choice = {"built_from": len(list(images.iterdir())), "scored": len(scored[:args.limit]),
                  "classes": len(part_classes), "chosen": {"bg_margin": best["bg_margin"], "vote": best["vote"]},
                  "rows": [{k: r[k] for k in ("bg_margin", "vote", "miou", "background_iou", "thing_miou")}
                           for r in rows]}
    db = protodb.open(home)
    build_s = build(db, args.data / "support" / "images", args.data / "support" / "labels", classes, args.extractor,
                    preset, args.mask_min_fraction, args.k, tuple(args.augment))
    maskcut = maskcut_rules(db, args.data, args.maskcut_rules) if args.maskcut_rules else None
    photos = sorted((args.data / args.split / "images").glob("*.jpg"))[:args.limit]
    sweep = [score(db, args.extractor, args.levels, classes, photos, args.data / args.split / "labels", cache, m, v,
                   windows) for m, v in combos]
    first = sweep[0]
    out = {
        "data": str(args.data), "split": args.split, "extractor": args.extractor, "classes": len(classes),
        "support_photos": len(list((args.data / "support" / "images").glob("*.jpg"))), "eval_photos": len(photos),
        **{k: first[k] for k in ("miou", "background_iou", "thing_miou", "per_class", "seconds_per_photo",
                                 "cpu_seconds_per_photo", "extractor_calls", "cached_calls", "settings")},
        "build_s": round(build_s, 1),
        "build": {"mask_min_fraction": args.mask_min_fraction, "k": args.k, "bg_value": 0, "augment": args.augment,
                  "levels": args.levels, "db": str(home)},
        "machine": machine(),
        "sweep": [{k: r[k] for k in ("bg_margin", "vote", "miou", "background_iou", "thing_miou")} for r in sweep],
        "choice": choice, "maskcut": maskcut, "smoke": args.smoke,
    }
    per = out["per_class"]
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"COCO dev {args.split}: {len(photos)} photos, {len(classes)} classes + background from "
          f"{out['support_photos']} support photos, {args.extractor}; build {build_s:.0f} s")
    print(f"  mIoU {out['miou']:5.2f}  background {out['background_iou']}  things {out['thing_miou']}  "
          f"{out['seconds_per_photo']:.2f} s/photo ({out['cpu_seconds_per_photo']:.2f} CPU-s; "
          f"{out['cached_calls']}/{out['extractor_calls']} extractor calls cached)")
    print("  " + "  ".join(f"{k} {v}" for k, v in per.items()))
    if choice:
        print(f"  chosen on the support split ({choice['built_from']} photos -> {choice['scored']}): "
              f"bg margin {choice['chosen']['bg_margin']}, vote {choice['chosen']['vote']}")
        for r in choice["rows"]:
            print(f"    bg margin {r['bg_margin']:<6} vote {r['vote']:<3} mIoU {r['miou']:5.2f}  "
                  f"background {r['background_iou']}  things {r['thing_miou']}")
    if maskcut:
        print(f"  MaskCut affinity rules on {maskcut['photos']} support photos (agreement: first mask IoU with "
              f"tau {maskcut['reference']}'s):")
        for r, row in maskcut["rules"].items():
            print(f"    tau {r:<5} edges {row['edge_share']}  agreement {row['first_mask_agreement']}  "
                  f"first mask vs labelled object IoU {row['first_mask_object_iou']}  empty {row['empty_first_masks']}")
    if not choice and len(out["sweep"]) > 1:
        for r in out["sweep"]:
            print(f"  {args.split}: bg margin {r['bg_margin']:<6} vote {r['vote']:<3} mIoU {r['miou']:5.2f}  "
                  f"background {r['background_iou']}  things {r['thing_miou']}")


if __name__ == "__main__":
    sys.exit(main())
