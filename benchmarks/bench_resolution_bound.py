"""How much a patch grid's resolution alone caps each CamVid class: the ground-truth label maps, averaged
over every cell of a grid at a given stride (one-hot labels, area average) and brought back to the pixels
the way ``segment`` does (bilinear, argmax), scored against themselves. A class that scores low here
cannot score higher with any features at that stride; ``--subpatch N`` divides the stride by N.

    python benchmarks/bench_resolution_bound.py                 # strides 14, 7, 3.5 at short side 448
    python benchmarks/bench_resolution_bound.py --json
    python benchmarks/bench_resolution_bound.py --smoke --camvid DIR   # 2 label maps, strides 14 and 7

The label maps are read in place from ../shared/data/camvid (never copied).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from protodb.vocabularies import load_builtin

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"
VOID = 11


def bound(labels: list[np.ndarray], stride: float, short_side: int, n_classes: int) -> np.ndarray:
    """Per-class IoU (%) of the label maps after a round trip through a grid of ``stride`` pixels of the
    image resized to ``short_side``."""
    inter, union = np.zeros(n_classes), np.zeros(n_classes)
    for lab in labels:
        H, W = lab.shape
        onehot = torch.from_numpy(np.eye(n_classes + 1, dtype=np.float32)[lab][..., :n_classes]).permute(2, 0, 1)
        cell = stride * min(H, W) / short_side  # the stride in original pixels
        grid = F.adaptive_avg_pool2d(onehot[None], (max(1, round(H / cell)), max(1, round(W / cell))))
        pred = F.interpolate(grid, size=(H, W), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
        valid = lab < n_classes
        for c in range(n_classes):
            p, t = (pred == c) & valid, lab == c
            inter[c] += (p & t).sum()
            union[c] += (p | t).sum()
    return 100 * inter / np.maximum(union, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--camvid", type=Path, default=CAMVID)
    ap.add_argument("--split", default="val")
    ap.add_argument("--strides", default="14,7,3.5", help="grid strides in resized pixels")
    ap.add_argument("--short-side", type=int, default=448)
    ap.add_argument("--limit", type=int, default=None, help="the first N label maps only")
    ap.add_argument("--smoke", action="store_true", help="2 label maps, strides 14 and 7: checks the script runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.limit, args.strides = 2, "14,7"
    folder = args.camvid / f"{args.split}annot"
    if not folder.is_dir():
        raise SystemExit(f"CamVid labels not found at {folder}")
    names = load_builtin("camvid")["classes"]
    labels = [np.asarray(Image.open(f)).astype(np.int64) for f in sorted(folder.iterdir())[: args.limit]]
    out = {}
    for stride in (float(s) for s in args.strides.split(",")):
        iou = bound(labels, stride, args.short_side, len(names))
        out[str(stride)] = {"miou": round(float(iou.mean()), 1), **{n: round(float(v), 1) for n, v in zip(names, iou)}}
    if args.json:
        print(json.dumps({"images": len(labels), "short_side": args.short_side, "bounds": out, "smoke": args.smoke},
                         indent=2))
        return
    print(f"CamVid {args.split} ({len(labels)} label maps), short side {args.short_side}: IoU after a grid round trip")
    for stride, row in out.items():
        print(f"  stride {stride:>4}: " + "  ".join(f"{k} {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
