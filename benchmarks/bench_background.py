"""Exemplar backgrounds must be background: a few-exemplar split WITH a background class, built from
CamVid by treating the stuff classes as background (issue 10, item 6a).

Thing classes: pole, sign symbol, car, pedestrian, bicyclist; everything else (sky, building, road,
pavement, tree, fence) is background; void is ignored. Each thing class gets ``--shots`` exemplars from
``train`` (the photos where it covers the most pixels) with label maps as masks; ``val`` is scored with
a background class. Three ways to take the exemplars' background prototypes are compared:

* ``labelled`` (protodb's default, ``--bg-value 0``): only pixels labelled background;
* ``rest`` (the old behaviour, ``bg_value=None``): every pixel that is not the class — other things
  in the photo (the car behind a pedestrian) become "background";
* ``none`` (``--no-exemplar-background``): no background prototypes from exemplars.

    python benchmarks/bench_background.py --shots 5 --limit 40
    python benchmarks/bench_background.py --smoke --camvid DIR   # 1 exemplar, 2 val images, the tiny preset's
                                                                 # random-weight ViT: checks the script runs

``--bg-margins 0 0.05`` and ``--votes 1 4`` also score the ``labelled`` database with each background margin and
kNN vote (``protodb segment --bg-margin --vote``; the clutter methods of issue 20), the extractor's calls on each
val photo made once and replayed (float16) for every setting.

``--json`` prints ``{"shots", "extractor", "results": [one row per mode], "methods": [one row per (bg_margin,
vote)], "smoke"}``.

Label maps are derived in a temporary folder (never in the repository: CamVid is CC BY-NC).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

import protodb
from protodb.images import load_image
from protodb.pipeline.config import AddClassRequest
from protodb.segment.metrics import MIoU
from protodb.segment.options import SegmentOptions

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"
THINGS = {"pole": 2, "sign symbol": 6, "car": 8, "pedestrian": 9, "bicyclist": 10}
VOID = 11
BUILT: set[Path] = set()  # database homes built in this run


def relabel(raw: np.ndarray) -> np.ndarray:
    """CamVid values -> 0 background, 1..K things (THINGS order), 255 void."""
    out = np.zeros_like(raw, dtype=np.uint8)
    for k, value in enumerate(THINGS.values(), 1):
        out[raw == value] = k
    out[raw == VOID] = 255
    return out


def prepare(camvid: Path, work: Path, shots: int) -> dict[str, tuple[Path, Path]]:
    """Per thing class: a folder of its ``shots`` best train photos (symlinks) and their relabelled maps."""
    maps = {p.name: relabel(np.asarray(PIL.Image.open(camvid / "trainannot" / p.name)))
            for p in sorted((camvid / "train").glob("*.png"))}
    out = {}
    for k, name in enumerate(THINGS, 1):
        best = sorted(maps, key=lambda n: -(maps[n] == k).sum())[:shots]
        ex, mk = work / name.replace(" ", "_") / "ex", work / name.replace(" ", "_") / "mk"
        ex.mkdir(parents=True), mk.mkdir(parents=True)
        for n in best:
            (ex / n).symlink_to(camvid / "train" / n)
            PIL.Image.fromarray(maps[n]).save(mk / n)
        out[name] = (ex, mk)
    return out


class Replay:
    """An extractor whose calls are kept in memory by the crops' bytes (float16, returned as float32 every
    time): each method scores the same features."""

    def __init__(self, extractor):
        self._inner, self._memo = extractor, {}

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __call__(self, crops):
        key = hashlib.sha256(crops.detach().cpu().contiguous().numpy().tobytes()).digest()
        if key not in self._memo:
            self._memo[key] = self._inner(crops).detach().cpu().to(torch.float16)
        return self._memo[key].float()


def build_db(home: Path, folders, extractor: str, mode: str):
    db = protodb.open(home)
    builder = db.builder(preset="tiny" if extractor == "tiny-vit" else None)  # tiny-vit: the tiny preset's
    for k, name in enumerate(THINGS, 1):
        ex, mk = folders[name]
        builder.add_class(AddClassRequest(name=name, images=0, exemplars=ex, masks=mk, mask_value=k,
                                          bg_value=0 if mode == "labelled" else None,
                                          exemplar_background=mode != "none", extractors=(extractor,),
                                          kind="thing"))
    db.vocabs.create("things", list(THINGS), replace=True, background=True)
    return db


def run(home: Path, folders, extractor: str, mode: str, camvid: Path, limit: int | None, *, bg_margin: float = 0.0,
        vote: int = 1, replay: dict | None = None) -> dict:
    db = protodb.open(home) if home in BUILT else build_db(home, folders, extractor, mode)
    BUILT.add(home)
    seg = db.segmenter(SegmentOptions(vocab="things", background=True, bg_margin=bg_margin, vote=vote))
    if replay is not None:
        for e, ext in list(seg.extractors.items()):
            seg.extractors[e] = replay.setdefault(e, Replay(ext))
    names = list(THINGS) + ["background"]
    metric = MIoU(len(names), ignore_index=255, names=names)
    val = sorted((camvid / "val").glob("*.png"))[:limit]
    t = time.perf_counter()
    for p in val:
        gt = relabel(np.asarray(PIL.Image.open(camvid / "valannot" / p.name))).astype(np.int64)
        gt = np.where(gt == 255, 255, np.where(gt == 0, len(THINGS), gt - 1))  # vocabulary index space
        metric.update(seg.segment(load_image(p)).labels.astype(np.int64), gt)
    res = metric.result()
    per = {k: (None if v is None else round(100 * v, 1)) for k, v in res["per_class"].items()}
    things = [v for k, v in per.items() if k != "background" and v is not None]
    return {"mode": mode, "bg_margin": bg_margin, "vote": vote, "miou": round(100 * res["miou"], 2),
            "thing_miou": round(sum(things) / len(things), 2),
            "per_class": per, "images": len(val), "s_per_image": round((time.perf_counter() - t) / len(val), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--camvid", type=Path, default=CAMVID)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--extractor", default="focus-vits14-torch", help="a built-in extractor, or tiny-vit (the tiny "
                    "preset's random-weight ViT)")
    ap.add_argument("--modes", nargs="*", default=["labelled", "rest", "none"])
    ap.add_argument("--bg-margins", nargs="*", type=float, default=[], help="also score the labelled database "
                    "with these background margins (each with every --votes)")
    ap.add_argument("--votes", nargs="*", type=int, default=[1], help="kNN votes for the --bg-margins rows")
    ap.add_argument("--smoke", action="store_true",
                    help="1 exemplar per class, 2 val images, tiny-vit: checks the script runs "
                         "(figures not meaningful)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.shots, args.limit, args.extractor = 1, 2, "tiny-vit"
    if not args.camvid.exists():
        raise SystemExit(f"CamVid not found at {args.camvid}")
    with tempfile.TemporaryDirectory(prefix="protodb-bg-") as tmp:
        work = Path(tmp)
        folders = prepare(args.camvid, work / "exemplars", args.shots)
        results = [run(work / f"db-{m}", folders, args.extractor, m, args.camvid, args.limit) for m in args.modes]
        replay: dict = {}
        methods = [run(work / "db-methods", folders, args.extractor, "labelled", args.camvid, args.limit,
                       bg_margin=m, vote=v, replay=replay) for m in args.bg_margins for v in args.votes]
    if args.json:
        print(json.dumps({"shots": args.shots, "extractor": args.extractor, "results": results, "methods": methods,
                          "smoke": args.smoke}, indent=2))
        return
    print(f"CamVid things + background, {args.shots} exemplars per class, {args.extractor}, "
          f"{results[0]['images']} val images")
    for r in results:
        print(f"  background from {r['mode']:<9} mIoU {r['miou']:5.2f}  things {r['thing_miou']:5.2f}  "
              + "  ".join(f"{k} {v}" for k, v in r["per_class"].items()) + f"  ({r['s_per_image']} s/image)")
    for r in methods:
        print(f"  labelled, bg margin {r['bg_margin']:<5} vote {r['vote']:<2} mIoU {r['miou']:5.2f}  "
              f"things {r['thing_miou']:5.2f}  background {r['per_class']['background']}")


if __name__ == "__main__":
    main()
