"""GPU figures with full-size architectures and random weights (nothing is downloaded).

1. One class: ``ClassBuilder.add_class`` with the Stable Diffusion 1.5 architecture (UNet 860M, VAE, CLIP
   ViT-L/14 text encoder; random weights, built once and saved like a real model folder) and the DINOv2
   ViT-S/14 architecture (timm ``vit_small_patch14_dinov2``, random weights saved to a local checkpoint):
   ``--images`` images (64) at ``--size`` (512) px, ``--steps`` (30) steps, fp16, generator batch
   ``--gen-batch``; everything protodb does (attention capture, artifacts, masks, k-means, commit) is timed.
2. Segmenting: 21 classes of random prototypes (97 foreground + 97 background each, as OVDiff builds
   them) with the same DINOv2 architecture, photos of 720x960 resized to a 448 short side, windows as in
   the paper; images/s one by one (``VocabularySegmenter.segment``, batch 1) and batched across images
   (``VocabularySegmenter.segment_many``, batch 16).

    python benchmarks/bench_gpu.py [--json] [--save-costs HOME]   # on a CUDA machine
    python benchmarks/bench_gpu.py --smoke                        # tiny sizes: checks the script runs anywhere

``--smoke`` runs the same calls with the tiny preset's random-weight generator and a 2-block DINOv2-shaped
ViT (dim 64) instead of the full-size architectures: 2 images of 64 px, 2 steps, 2 classes, 2 photos of
96x128; support images and photos at a 224 short side (on a CPU in about a minute, most of it imports; its
figures mean nothing).

``--save-costs HOME`` writes the measured per-image costs to HOME/costs.json, which ``--dry-run`` plans of
that database then use. Goal (issue 11), on an H100-class GPU: a class in <= 25 s and >= 20 images/s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_add_class import build_sd15_random  # noqa: E402 - the SD 1.5 architecture, random weights

DINO = "vit_small_patch14_dinov2.lvd142m"


#: ``--smoke``: the DINOv2 ViT-S/14 layout (patch 14, register-free, layer scale) at a toy width and depth
SMOKE_DINO_KWARGS = {"embed_dim": 64, "depth": 2, "num_heads": 2}


def build_dino_random(folder: Path, model_kwargs: dict | None = None) -> Path:
    """The DINOv2 ViT-S/14 architecture with random weights, as a local safetensors checkpoint
    (``model_kwargs``: timm overrides, e.g. a smaller width for ``--smoke``)."""
    import safetensors.torch
    import timm

    path = folder / ("dinov2-vits14-random.safetensors" if not model_kwargs else "dinov2-smoke-random.safetensors")
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = timm.create_model(DINO, pretrained=False, num_classes=0, dynamic_img_size=True, **(model_kwargs or {}))
        tmp = path.with_name(path.name + ".tmp")
        safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        tmp.rename(path)
    return path


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--gen-batch", type=int, default=16)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--photos", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "protodb-bench")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script runs (any device)")
    ap.add_argument("--save-costs", type=Path, default=None, metavar="HOME")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.images, args.size, args.steps, args.gen_batch, args.photos, args.batch = 2, 64, 2, 2, 2, 2
        args.classes = 2
    short_side = 224 if args.smoke else 448

    import PIL.Image

    import protodb
    from protodb.device import choose_device, choose_dtype
    from protodb.features.windows import WindowSpec
    from protodb.models.extractors import spec_from_dict
    from protodb.pipeline.config import AddClassRequest
    from protodb.segment.options import SegmentOptions
    from protodb.speed import PRESETS

    device = choose_device("auto")
    dtype = "float16" if device.type == "cuda" else dtype_name(choose_dtype(device, "auto"))
    t0 = time.perf_counter()
    if args.smoke:  # the tiny preset's generator, saved like a real model folder and loaded back by path
        from protodb.models.tiny import build_tiny_generator

        sd = args.models / "tiny-generator"
        build_tiny_generator(sd)
    else:
        sd = build_sd15_random(args.models / "sd15-random")
    dino_kwargs = SMOKE_DINO_KWARGS if args.smoke else {}
    dino = build_dino_random(args.models, dino_kwargs)
    build_s = time.perf_counter() - t0
    work = Path(tempfile.mkdtemp(prefix="protodb-bench-gpu-"))
    db = protodb.open(work / "db")
    spec = spec_from_dict({"name": "dinov2-random", "kind": "timm", "config": {
        "model": DINO, **({"model_kwargs": dino_kwargs} if dino_kwargs else {}), "checkpoint": str(dino),
        "facet": "token", "layer": -1, "patch_size": 14,
        "input_size": 448, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}})
    db.add_extractor(spec)
    builder = db.builder(device=str(device), dtype=dtype)

    def one_class(name: str, images: int) -> float:
        req = AddClassRequest(name=name, images=images, generator=str(sd), steps=args.steps, size=args.size,
                              extractors=("dinov2-random",), batch_size=args.gen_batch, k=32,
                              short_side=short_side)
        sync()
        t = time.perf_counter()
        builder.add_class(req)
        sync()
        return time.perf_counter() - t

    one_class("warm up", min(2, args.images))  # loading and first-call costs belong to no class
    class_s = one_class("boat", args.images)

    # ---- segmenting: 21 classes of random prototypes, committed as real sets of the random DINOv2
    reg = db.registry()
    ext = reg.load_extractor(spec, device, dtype)
    record = reg.extractor_record(spec, ext)
    rng = np.random.default_rng(0)
    from protodb.storage.vectors import PrototypeRows

    names = [f"class {i}" for i in range(args.classes)]
    for i, name in enumerate(names):
        kinds = []
        for prefix in ("", "bg_"):
            kinds += [prefix + "class"] + [prefix + "instance"] * 64 + [prefix + "part"] * 32
        vecs = rng.normal(size=(len(kinds), record.dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        rows = PrototypeRows(vectors=vecs, kinds=kinds, regions=[None] * len(kinds))
        db.sets.commit(name, record, rows, config_hash=f"bench-{i}")
    seg = db.segmenter(SegmentOptions(classes=",".join(names), extractors=("dinov2-random",),
                                      device=str(device), dtype=dtype, windows=WindowSpec(short_side=short_side)))
    side = (96, 128) if args.smoke else (720, 960)
    photos = [PIL.Image.fromarray((rng.random((*side, 3)) * 255).astype(np.uint8)) for _ in range(args.photos)]
    seg.segment(photos[0])
    seg.segment_many(photos[: args.batch], [str(i) for i in range(args.batch)])  # warm-up of both paths
    sync()
    t = time.perf_counter()
    for im in photos:
        seg.segment(im)
    sync()
    one_by_one = len(photos) / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, len(photos), args.batch):
        seg.segment_many(photos[i:i + args.batch], [str(j) for j in range(i, i + args.batch)])
    sync()
    batched = len(photos) / (time.perf_counter() - t)
    presets = {}
    for name in PRESETS:  # each speed preset's windows, batched across images (the GPU path)
        pseg = db.segmenter(SegmentOptions(classes=",".join(names), extractors=("dinov2-random",), device=str(device),
                                           dtype=dtype, windows=WindowSpec(short_side=short_side), speed=name))
        pseg.segment_many(photos[: args.batch], [str(i) for i in range(args.batch)])
        sync()
        t = time.perf_counter()
        for i in range(0, len(photos), args.batch):
            pseg.segment_many(photos[i:i + args.batch], [str(j) for j in range(i, i + args.batch)])
        sync()
        presets[name] = {"images_per_s": round(len(photos) / (time.perf_counter() - t), 2),
                         "windows": pseg.settings.to_dict()["windows"], "dtype": pseg.settings.dtype,
                         "passes": pseg.settings.to_dict().get("passes")}

    result = {"device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
              "dtype": dtype, "class": {"images": args.images, "size": args.size, "steps": args.steps,
                                        "generator_batch": args.gen_batch, "seconds": round(class_s, 2)},
              "segment": {"classes": args.classes, "photo": list(side), "short_side": short_side,
                          "batch": args.batch, "images_per_s_batch_1": round(one_by_one, 2),
                          f"images_per_s_batch_{args.batch}": round(batched, 2), "presets": presets},
              "model_build_s": round(build_s, 1), "smoke": args.smoke}
    if args.save_costs and not args.smoke:
        costs = {"generate": {"sd15": {"seconds_per_image": round(class_s / args.images, 4),
                                       "source": f"measured: benchmarks/bench_gpu.py on {result['gpu'] or device}"}},
                 "build": {"default": {"seconds_per_image": 0.0, "source": "included in the generate cost"}},
                 "segment": {"default": {"seconds_per_image": round(1 / batched, 4),
                                         "source": f"measured: benchmarks/bench_gpu.py on {result['gpu'] or device}, "
                                                   f"batch {args.batch}"}}}
        args.save_costs.mkdir(parents=True, exist_ok=True)
        (args.save_costs / "costs.json").write_text(json.dumps(costs, indent=2) + "\n")
    db.close()
    shutil.rmtree(work, ignore_errors=True)  # the benchmark's database: nothing of it is kept
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        c, s = result["class"], result["segment"]
        print(f"class: {c['seconds']} s for {c['images']} images ({c['size']} px, {c['steps']} steps, {dtype}, "
              f"{result['gpu'] or device}) | segment {s['classes']} classes: {s['images_per_s_batch_1']} img/s "
              f"at batch 1, {s[f'images_per_s_batch_{args.batch}']} img/s at batch {args.batch}; presets "
              + ", ".join(f"{k} {v['images_per_s']} img/s" for k, v in s["presets"].items()))


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


if __name__ == "__main__":
    main()
