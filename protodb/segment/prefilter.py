"""CLIP multi-label pre-filter (OVDiff): guess which vocabulary classes are in an image before matching.

1. CLIP probabilities over the N classes: softmax of the image-text logits for prompts
   ``"a photo of a {name}."``; thing classes with p >= 1/N survive (the ``max_keep`` most probable if more).
2. Among all non-empty subsets of the survivors (at most 2^max_keep - 1), keep the one whose prompt listing
   it (``"a photo of a cat, a dog and a bird."``) has the highest cosine with the image embedding; ties go
   to the smaller subset, then the earlier one in vocabulary order.
3. Stuff classes are always kept (they are not part of the subset search).
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from protodb.errors import InvalidInput


def class_prompt(name: str) -> str:
    """Prompt for one class: ``"a photo of a {name}."``."""
    return f"a photo of a {name}."


def subset_prompt(names: Sequence[str]) -> str:
    """Prompt listing several classes: ``"a photo of a cat."``, ``"a photo of a cat and a dog."``,
    ``"a photo of a cat, a dog and a bird."``."""
    items = [f"a {n}" for n in names]
    listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return f"a photo of {listed}."


def _features(out) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipPrefilter:
    """A transformers CLIP model (hub id or local folder with the model, tokenizer and image processor)."""

    def __init__(self, model_path: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, revision: str | None = None, batch: int = 256):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        src = str(Path(model_path).expanduser()) if Path(str(model_path)).expanduser().exists() else str(model_path)
        try:
            self.model = CLIPModel.from_pretrained(src, revision=revision, dtype=dtype).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(src, revision=revision)
            self.processor = AutoImageProcessor.from_pretrained(src, revision=revision)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InvalidInput(f"cannot load CLIP pre-filter model {model_path!r}: {first}; give a hub id "
                               "or a folder with a CLIP model, tokenizer and image processor") from None
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch = int(batch)

    @torch.no_grad()
    def image_embedding(self, image) -> torch.Tensor:
        """PIL RGB image -> (E,) float32 L2-normalised image embedding."""
        pixels = self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        out = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        return F.normalize(_features(out).float()[0], dim=-1)

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """prompts -> (len, E) float32 L2-normalised text embeddings, ``batch`` prompts per forward."""
        outs = []
        for i in range(0, len(prompts), self.batch):
            tok = self.tokenizer(list(prompts[i:i + self.batch]), padding=True, truncation=True,
                                 return_tensors="pt")
            tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
            outs.append(F.normalize(_features(self.model.get_text_features(**tok)).float(), dim=-1))
        return torch.cat(outs)

    @torch.no_grad()
    def probabilities(self, image, names: Sequence[str]) -> torch.Tensor:
        """(N,) float32 softmax over classes of CLIP's image-text logits (``logit_scale`` applied)."""
        return self._probabilities(self.image_embedding(image), names)

    def _probabilities(self, img: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        txt = self.text_embeddings([class_prompt(n) for n in names])
        scale = self.model.logit_scale.exp().float().to(img.device)
        return torch.softmax(scale * (txt @ img), dim=0).cpu()

    @torch.no_grad()
    def select(self, image, names: Sequence[str], stuff: Sequence[bool], max_keep: int = 10) -> list[int]:
        """Indices (sorted) of the classes to match in ``image``: the best-matching subset of the likely
        thing classes, plus every stuff class. ``max_keep`` (1..16) bounds the survivors, hence the
        subsets scored (2^max_keep - 1)."""
        if len(names) != len(stuff):
            raise InvalidInput(f"{len(names)} class names but {len(stuff)} stuff flags")
        if not 1 <= max_keep <= 16:
            raise InvalidInput(f"max_keep must be between 1 and 16; got {max_keep}")
        if not names:
            return []
        keep_stuff = [i for i, s in enumerate(stuff) if s]
        things = [i for i, s in enumerate(stuff) if not s]
        if not things:
            return keep_stuff
        img = self.image_embedding(image)
        probs = self._probabilities(img, names)
        threshold = 1.0 / len(names)
        survivors = [i for i in things if float(probs[i]) >= threshold]
        if not survivors:
            return keep_stuff
        if len(survivors) > max_keep:  # most probable first; stable for equal probabilities
            survivors = sorted(sorted(survivors, key=lambda i: -float(probs[i]))[:max_keep])
        subsets = [c for r in range(1, len(survivors) + 1) for c in combinations(survivors, r)]
        sims = self.text_embeddings([subset_prompt([names[i] for i in s]) for s in subsets]) @ img
        best = subsets[int(torch.argmax(sims))]  # argmax returns the first maximum
        return sorted(set(best) | set(keep_stuff))
