"""Drawing support images of a class with a text-to-image pipeline, with their attention maps.

Every image has its own seed, derived from (base seed, class name, index), and its own
``torch.Generator``, so image ``i`` can be regenerated alone and comes out the same as when it was
drawn inside a batch. Images are drawn in batches (one pipeline call per batch) and yielded one by
one, so the caller can persist each as it arrives.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from protodb.errors import InvalidInput
from protodb.models.generators import GeneratorSpec
from protodb.pipeline.attention import CrossAttentionRecorder


def derive_seed(base_seed: int, class_name: str, index: int) -> int:
    """Seed of image ``index`` of ``class_name``: the first 8 bytes of sha256("base:class:index") mod 2**31.

    Stable across processes, platforms and Python versions (no ``hash()``); class_name is used as
    given (normalise it before calling if "Boat" and "boat" should share seeds).
    """
    digest = hashlib.sha256(f"{int(base_seed)}:{class_name}:{int(index)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 2**31


def token_indices(tokenizer, prompt: str, class_name: str) -> list[int]:
    """Positions of the class-name tokens in the tokenized prompt (position 0 is BOS).

    Every occurrence of the class name's token sequence counts (sorted, unique). Raises InvalidInput
    when the prompt does not contain the class name, or it falls past the tokenizer's max length.
    """
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length)["input_ids"]
    name_ids = tokenizer(class_name, add_special_tokens=False)["input_ids"]
    if not name_ids:
        raise InvalidInput(f"class name {class_name!r} has no tokens; use a non-empty name")
    n = len(name_ids)
    found = [i + k for i in range(len(ids) - n + 1) if ids[i : i + n] == name_ids for k in range(n)]
    if not found:
        raise InvalidInput(
            f"prompt {prompt!r} does not contain the class name {class_name!r} within "
            f"{tokenizer.model_max_length} tokens; put the name in the prompt (or shorten it)"
        )
    return sorted(set(found))


@dataclass
class Generated:
    """One support image.

    image: RGB, spec.width x spec.height. attention: (height, width) float32 in [0, 1], the class
    tokens' cross-attention summed over heads, layers and steps, min-max normalised per image.
    """

    index: int
    seed: int
    image: PIL.Image.Image
    attention: np.ndarray


def generate(
    pipe,
    spec: GeneratorSpec,
    class_name: str,
    indices: Sequence[int],
    base_seed: int,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    batch_size: int = 4,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Generated]:
    """Draw images ``indices`` of ``class_name``; yields one :class:`Generated` per index, in order.

    prompt: defaults to ``spec.prompt_template`` with the class name; it must contain the class
    name (its tokens are where attention is read). negative_prompt: defaults to the spec's; "" for
    none; only used when classifier-free guidance runs (guidance > 1) and the pipeline takes one.
    One pipeline call per batch of up to ``batch_size`` images; progress(n_done) as each image is
    handed out.
    """
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    prompt = spec.prompt_template.format(name=class_name) if prompt is None else prompt
    negative = spec.negative_prompt if negative_prompt is None else (negative_prompt or None)
    tokens = token_indices(pipe.tokenizer, prompt, class_name)
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    latent = (spec.height // scale, spec.width // scale)
    takes_negative = "negative_prompt" in inspect.signature(pipe.__call__).parameters
    use_negative = takes_negative and negative is not None and spec.guidance > 1.0

    indices = [int(i) for i in indices]
    done = 0
    with CrossAttentionRecorder(pipe.unet, tokens, latent) as recorder:
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            seeds = [derive_seed(base_seed, class_name, i) for i in batch]
            # CPU generators: the initial noise is the same on every device
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            kwargs = {"negative_prompt": [negative] * len(batch)} if use_negative else {}
            recorder.reset(num_images=len(batch))
            with torch.inference_mode():
                images = pipe(
                    prompt=[prompt] * len(batch),
                    height=spec.height,
                    width=spec.width,
                    num_inference_steps=spec.steps,
                    guidance_scale=spec.guidance,
                    generator=generators,
                    output_type="pil",
                    **kwargs,
                ).images
                maps = _to_image_size(recorder.maps(), spec.height, spec.width)
            for k, (index, seed) in enumerate(zip(batch, seeds)):
                done += 1
                if progress is not None:
                    progress(done)
                yield Generated(index=index, seed=seed, image=images[k].convert("RGB"), attention=maps[k])


def _to_image_size(maps: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(B, h, w) in [0, 1] -> (B, height, width) float32 numpy in [0, 1] (bilinear)."""
    up = F.interpolate(maps[:, None].float().cpu(), size=(height, width), mode="bilinear", align_corners=False)
    return up[:, 0].clamp_(0.0, 1.0).numpy().astype(np.float32, copy=False)
