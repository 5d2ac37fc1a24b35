"""What one photo costs on this machine without a GPU: per extractor variant and dtype, one forward per
window size, segment per photo and support featurisation per photo; and per speed preset, segment per
photo with the recommended extractor. CPU seconds (this process, all threads) and wall seconds are both
reported, with the CPU model, torch's thread count and the dtype beside every figure.

One 480x360 photo (the first ../shared/data/camvid/val/*.png next to the repo when present, else
scikit-image's astronaut resized), resized as segment does (short side 448 -> 448x602).

* ``forward``: one backbone call per window size (224, 336, 448 squares and the whole 448x602 image); a
  tiled extractor runs its 224 tiles inside. ``forward_448_s``: the untiled ViT-S/14 at 448x448, wall.
* ``segment``: the segment windows of one photo (the extractor's: a tiled one's own tiles, else 448 and 336
  at stride 224; + the whole image) through :meth:`Extractor.window_features` (tiled extractors run each
  shared tile once) and scored against an 11-class table of 1,100 random prototypes
  (:func:`protodb.segment.windows.window_scores`).
* ``support``: :func:`protodb.features.featurize.featurize` of the photo through the support windows add-class
  records for the extractor (or one pass for ``--speed fast``), no cache.
* ``best_448_336``: the ``best`` preset through 448/336 windows at stride 224 (its windows before tiled
  extractors were scored through their own tiles), segment and support, in the same run.
* ``before``: the previous recommended setting, focus-vits14-flip fp32 with every window run on its own
  (what segment did before windows shared tiles and the mirror pass was batched).

Each figure is the minimum over ``--repeats`` runs after one warm-up.

    python benchmarks/bench_speed.py [--repeats 3] [--json]
    python benchmarks/bench_speed.py --variants focus-vits14-tiles-flip --dtypes bfloat16 --compile   # torch.compile
    python benchmarks/bench_speed.py --smoke --json   # tiny-vit, 160x120 photo: checks it runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_extractor_speed import load_photo  # noqa: E402

from protodb.device import choose_dtype, cpu_has_fast_bf16, dtype_name  # noqa: E402
from protodb.features.crops import resize_for  # noqa: E402
from protodb.features.featurize import featurize  # noqa: E402
from protodb.features.windows import (  # noqa: E402
    DEFAULT_SIZES, DEFAULT_STRIDE, SUPPORT_WINDOWS, WindowSpec, plan_windows, support_plan, support_window_spec)
from protodb.models.extractors.loading import COMPILE_ENV, load_extractor  # noqa: E402
from protodb.models.extractors.spec import builtin_specs, resolve_paths  # noqa: E402
from protodb.paths import user_cache_dir  # noqa: E402
from protodb.segment.match import build_match_table  # noqa: E402
from protodb.segment.windows import window_scores  # noqa: E402
from protodb.speed import PRESETS  # noqa: E402

RECOMMENDED = "focus-vits14-tiles-flip-l4"  # the README's recommended extractor (best LODO mean)
VARIANTS = ("focus-vits14", "focus-vits14-tiles", "focus-vits14-tiles-flip", "focus-vits14-tiles-flip-l4", "focus-vits14-torch",
            "focus-vits14-flip")


def measure(fn, repeats: int) -> dict:
    """min wall and min CPU seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        c, t = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return {"s": round(min(walls), 5), "cpu_s": round(min(cpus), 5)}


def machine() -> dict:
    cpu = platform.processor()
    if pathlib.Path("/proc/cpuinfo").exists():
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo", encoding="utf-8")
                    if ln.startswith("model name")), cpu)
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "bf16_units": cpu_has_fast_bf16(),
            "torch": torch.__version__}


class _Vocab:
    """Stands for a loaded vocabulary: 11 classes x 100 random unit prototypes (the matching cost of a
    CamVid-sized table)."""

    def __init__(self, dim: int, classes: int = 11, per_class: int = 100):
        from protodb.segment.match import ClassPrototypes

        g = torch.Generator().manual_seed(0)
        protos = []
        for c in range(classes):
            v = torch.nn.functional.normalize(torch.randn(per_class, dim, generator=g), dim=-1)
            protos.append(ClassPrototypes(name=f"c{c}", stuff=False, fg=v, bg=v[:0],
                                          fg_ids=[f"{c}-{i}" for i in range(per_class)], bg_ids=[]))
        self.table = build_match_table(protos, background=False, stuff_filter_threshold=0.85,
                                       device=torch.device("cpu"), dtype=torch.float32)


def one_by_one(extractor, image: torch.Tensor, plan) -> list:
    """Every window through its own extractor call (the path before tiles were shared)."""
    return [extractor(image[None, :, w.top:w.top + w.height, w.left:w.left + w.width])[0] for w in plan]


def spec_of(name_or_spec):
    """A built-in extractor's spec (model paths under the user cache), or the spec itself."""
    if isinstance(name_or_spec, str):
        return resolve_paths(builtin_specs()[name_or_spec], user_cache_dir())
    return name_or_spec


def variant_row(ex_spec, dtype: str, photo: torch.Tensor, spec: WindowSpec, repeats: int, sizes, table_of) -> dict:
    extractor = load_extractor(ex_spec, "cpu", dtype)
    p = extractor.patch_size
    (H, W), (H2, W2), img = resize_for(photo, p, spec)
    forward = {}
    for side in sizes:
        crop = img[:, :, :side, :side] if side else img
        key = f"{crop.shape[2]}x{crop.shape[3]}"
        forward[key] = measure(lambda c=crop: extractor(c), repeats)
    table = table_of(extractor.dim)
    segment = measure(lambda: window_scores(photo, extractor, table, spec), repeats)
    support_spec = support_window_spec(support_plan(True, extractor.tile))
    photo_pil = _pil(photo)
    support = measure(lambda: featurize(extractor, [("x", photo_pil)], short_side=spec.short_side,
                                        windows=support_spec), repeats)
    return {"extractor": ex_spec.name, "dtype": extractor.dtype_label, "tiled": extractor.tile is not None,
            "forward": forward, "segment": segment, "support": support,
            "windows": len(plan_windows(H, W, spec.resolved(extractor.tile), p))}


def _pil(photo: torch.Tensor):
    import numpy as np
    import PIL.Image

    return PIL.Image.fromarray((photo.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def preset_rows(ex_spec, photo: torch.Tensor, spec: WindowSpec, repeats: int, table_of, quality: dict,
                compiled: bool = False) -> list:
    """One row per speed preset; ``compiled``: the extractor through torch.compile (``PROTODB_COMPILE=1``; its
    compilation happens in the untimed warm-up call)."""
    rows = []
    for preset in PRESETS.values():
        dtype = preset.dtype("cpu")
        dtype = dtype_name(choose_dtype(torch.device("cpu"), dtype))
        os.environ[COMPILE_ENV] = "1" if compiled else "0"
        try:
            extractor = load_extractor(ex_spec, "cpu", dtype)
        finally:
            os.environ.pop(COMPILE_ENV)
        table = table_of(extractor.dim)
        wspec = preset.windows(spec)
        seg_ex = preset.segment_extractor(extractor)  # the preset's segment-time passes (tiles, mirror)
        seg = measure(lambda: window_scores(photo, seg_ex, table, wspec), repeats)
        support_spec = support_window_spec(support_plan(True, extractor.tile)) if preset.support_windows else None
        photo_pil = _pil(photo)
        sup = measure(lambda: featurize(extractor, [("x", photo_pil)], short_side=spec.short_side,
                                        windows=support_spec), repeats)
        q = quality.get(preset.name, {})
        rows.append({"name": preset.name, "extractor": ex_spec.name, "dtype": dtype, "seconds_per_photo": seg["s"],
                     "cpu_seconds_per_photo": seg["cpu_s"], "support_seconds_per_photo": sup["s"],
                     "support_cpu_seconds_per_photo": sup["cpu_s"], "val_miou": q.get("val_miou"),
                     "lodo_miou": q.get("lodo_miou"), "passes": seg_ex.passes(), "subpatch": wspec.subpatch,
                     "compiled": extractor.compiled})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--dtypes", nargs="*", default=None,
                    help="dtypes per variant (default: float32, int8, and bfloat16 where the CPU has bf16 units)")
    ap.add_argument("--quality", type=pathlib.Path, default=None,
                    help="JSON {preset: {val_miou, lodo_miou}} measured by bench_camvid.py, copied into presets")
    ap.add_argument("--recommended", default=RECOMMENDED, help=f"the extractor the presets run (default {RECOMMENDED})")
    ap.add_argument("--compile", action="store_true", help="the presets' extractor through torch.compile "
                    "(PROTODB_COMPILE=1; compiled in the warm-up call); 'before' and the variants stay eager")
    ap.add_argument("--smoke", action="store_true", help="tiny-vit on a 160x120 photo, 1 repeat: checks it runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    quality = json.loads(args.quality.read_text()) if args.quality else {}
    spec = WindowSpec()
    recommended = args.recommended
    sizes = (224, 336, 448, None)
    if args.smoke:
        from protodb.models.tiny import build_tiny_extractor

        with tempfile.TemporaryDirectory(prefix="protodb-speed-") as tmp:
            tiny = build_tiny_extractor(pathlib.Path(tmp) / "tiny")
            tiled = dataclasses.replace(tiny, name="tiny-tiles", config={**tiny.config, "tile": {"size": 32, "stride": 16}})
            photo, source = load_photo((160, 120), camvid=False)
            args.repeats, spec, sizes = 1, WindowSpec(short_side=64, sizes=(64, 48), stride=32), (32, 48, 64, None)
            out = run(args, photo, source, spec, sizes, {"tiny-vit": tiny, "tiny-tiles": tiled}, "tiny-tiles", quality)
    else:
        photo, source = load_photo()
        out = run(args, photo, source, spec, sizes, {}, recommended, quality)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    m = out["machine"]
    print(f"{source}; {m['cpu']}, {m['torch_threads']} torch threads, bf16 units: {m['bf16_units']}")
    print(f"one ViT-S/14 forward at 448x448 (fp32, untiled): {out['forward_448_s']} s wall")
    for r in out["variants"]:
        print(f"  {r['extractor']:<26} {r['dtype']:<9} segment {r['segment']['s']:6.2f} s ({r['segment']['cpu_s']:6.2f} "
              f"CPU-s)  support {r['support']['s']:6.2f} s ({r['support']['cpu_s']:6.2f} CPU-s)  forward "
              + "  ".join(f"{k} {v['s']}" for k, v in r["forward"].items()))
    b = out["before"]
    print(f"  before: {b['extractor']} fp32, windows one by one: segment {b['segment']['s']} s ({b['segment']['cpu_s']} CPU-s)")
    o = out["best_448_336"]
    print(f"  best through 448/336 windows: segment {o['segment']['s']} s ({o['segment']['cpu_s']} CPU-s), support "
          f"{o['support']['s']} s ({o['support']['cpu_s']} CPU-s)")
    for r in out["presets"]:
        print(f"  preset {r['name']:<9} {r['extractor']} {r['dtype']:<9} segment {r['seconds_per_photo']} s "
              f"({r['cpu_seconds_per_photo']} CPU-s, {r['speedup_cpu']}x less than before), support "
              f"{r['support_seconds_per_photo']} s; val {r['val_miou']} LODO {r['lodo_miou']}")


def run(args, photo, source, spec, sizes, specs: dict, recommended: str, quality: dict) -> dict:
    tables: dict[int, object] = {}

    def table_of(dim: int):
        if dim not in tables:
            tables[dim] = _Vocab(dim).table
        return tables[dim]

    names = list(specs) if specs else args.variants
    dtypes = args.dtypes or (["float32", "int8"] + (["bfloat16"] if cpu_has_fast_bf16() else []))
    variants = []
    for name in names:
        seen = set()
        for dtype in dtypes:
            ex_spec = spec_of(specs.get(name, name))
            label = load_extractor(ex_spec, "cpu", dtype).dtype_label  # ONNX runs float32 whatever is asked
            if label not in seen:
                seen.add(label)
                variants.append(variant_row(ex_spec, dtype, photo, spec, args.repeats, sizes, table_of))
    # the untiled ViT at 448x448, fp32: the unit the budget is written in
    ex = load_extractor(spec_of(specs.get("tiny-vit", "focus-vits14-torch")), "cpu", "float32")
    side = min(448, spec.short_side)
    forward_448 = measure(lambda: ex(torch.rand(1, 3, side, side)), args.repeats)
    # before: the previous recommended path, fp32, every window on its own, mirror pass separate
    before_spec = spec_of(specs.get("tiny-vit", "focus-vits14-flip"))
    before_ex = load_extractor(before_spec, "cpu", "float32")
    (H, W), _, img = resize_for(photo, before_ex.patch_size, spec)
    plan = plan_windows(H, W, spec, before_ex.patch_size)
    before = {"extractor": before_spec.name, "segment": measure(lambda: one_by_one(before_ex, img[0], plan), args.repeats)}
    presets = preset_rows(spec_of(specs.get(recommended, recommended)), photo, spec, args.repeats, table_of, quality,
                          compiled=args.compile)
    for r in presets:
        r["speedup_cpu"] = round(before["segment"]["cpu_s"] / max(r["cpu_seconds_per_photo"], 1e-9), 2)
    # the best preset through 448/336 windows (as before tiled extractors were scored through their tiles)
    best_ex = load_extractor(spec_of(specs.get(recommended, recommended)), "cpu",
                             dtype_name(choose_dtype(torch.device("cpu"), PRESETS["best"].dtype("cpu"))))
    old = dataclasses.replace(spec, sizes=spec.sizes or DEFAULT_SIZES, stride=spec.stride or DEFAULT_STRIDE)
    best_448_336 = {"extractor": best_ex.spec.name, "dtype": best_ex.dtype_label,
                    "segment": measure(lambda: window_scores(photo, best_ex, table_of(best_ex.dim), old), args.repeats),
                    "support": measure(lambda: featurize(best_ex, [("x", _pil(photo))], short_side=spec.short_side,
                                                         windows=support_window_spec(SUPPORT_WINDOWS)), args.repeats)}
    return {"photo": source, "machine": machine(), "forward_448_s": forward_448["s"], "forward_448_cpu_s": forward_448["cpu_s"],
            "variants": variants, "before": before, "presets": presets, "best_448_336": best_448_336,
            "smoke": args.smoke}


if __name__ == "__main__":
    main()
