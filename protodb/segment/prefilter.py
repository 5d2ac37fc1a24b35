"""CLIP multi-label pre-filter (OVDiff): guess which vocabulary classes are in an image before matching.

The rule (:func:`choose_classes`, applied by :meth:`ClipPrefilter.select`):

1. The whole image is squashed (resized ignoring its aspect ratio, never centre-cropped) to CLIP's input
   size and embedded.
2. Only THING classes are classified; stuff classes are always kept and do not count. Each thing class
   gets one prompt ``"a {name}"``; p = softmax over the N_thing raw cosine similarities (no logit scale).
3. Thing classes with p >= 1/N_thing survive. If none do, the ``max_keep`` (10) most probable are taken
   instead; if more than ``max_keep`` do, the ``max_keep`` most probable of them (ties: vocabulary order).
4. Every non-empty subset of the survivors (at most 2^max_keep - 1) gets one prompt joining its classes
   with ``" and "`` (``"a cat and a dog and a bird"``): in vocabulary order, or, when more than
   ``max_keep`` survived and the ``max_keep`` most probable were taken, in probability order (most probable
   first, as the authors' code joins its top-k); the subset whose text
   embedding has the highest cosine with the image embedding wins (ties: the smaller subset, then the
   earlier one in :func:`itertools.combinations` order).
5. Kept: the winning subset plus every stuff class.

The class prompts' text embeddings (step 2) are computed once per vocabulary, not per image: with a
database (``stores``), :class:`TextEmbeddingCache` keeps them in a LanceDB table per text model (keyed by
the model's weights hash, its tokenizer and dtype, and the prompt text), filled in batches the first time
a segmenter needs them and read back by every later one, in any process. The subset prompts (step 4)
depend on the image and are embedded per image, as before.
"""

from __future__ import annotations

import logging
from itertools import combinations
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from protodb.errors import InvalidInput
from protodb.hashing import sha256_json
from protodb.models.extractors.base import pretrained_hash
from protodb.storage.vectors import TextEmbeddingTables
from protodb.stores import Stores

log = logging.getLogger(__name__)


def class_prompt(name: str) -> str:
    """Prompt for one class: ``"a {name}"``."""
    return f"a {name}"


def subset_prompt(names: Sequence[str]) -> str:
    """Prompt for several classes: their :func:`class_prompt` parts joined with ``" and "``:
    ``"a cat"``, ``"a cat and a dog"``, ``"a cat and a dog and a bird"``."""
    return " and ".join(class_prompt(n) for n in names)


def choose_classes(image_emb: torch.Tensor, thing_embs: torch.Tensor, stuff: Sequence[bool],
                   subset_embs: Callable[[list[tuple[int, ...]]], torch.Tensor], max_keep: int = 10,
                   threshold: float | None = None) -> list[int]:
    """The pre-filter rule (module docstring, steps 2-5) on embeddings.

    image_emb: (E,) image embedding. thing_embs: (N_thing, E) text embeddings of the thing classes'
    prompts, row k for the k-th False entry of ``stuff`` (stuff classes have no row). stuff: (N,) bools,
    one per vocabulary class. subset_embs: called once with the list of candidate subsets (tuples of
    vocabulary indices: increasing, or most probable first when more than ``max_keep`` survived), returns
    their (S, E) text embeddings in that order. Embeddings need
    not be normalised (cosines are taken). threshold: survival probability, default 1/N_thing (the
    softmax's mean, so with it at least one class survives except through rounding).
    Returns the kept vocabulary indices, sorted.
    """
    if not 1 <= max_keep <= 16:
        raise InvalidInput(f"max_keep must be between 1 and 16; got {max_keep}")
    keep_stuff = [i for i, s in enumerate(stuff) if s]
    things = [i for i, s in enumerate(stuff) if not s]
    if thing_embs.shape[0] != len(things):
        raise InvalidInput(f"{thing_embs.shape[0]} thing embeddings for {len(things)} thing classes")
    if not things:
        return keep_stuff
    img = F.normalize(image_emb.double().reshape(-1), dim=0)
    sims = F.normalize(thing_embs.double(), dim=-1) @ img  # (N_thing,) raw cosines
    probs = torch.softmax(sims, dim=0).tolist()
    cut = 1.0 / len(things) if threshold is None else float(threshold)
    by_prob = sorted(range(len(things)), key=lambda k: -probs[k])  # stable: vocabulary order on ties
    survivors = [k for k in range(len(things)) if probs[k] >= cut]
    if not survivors:
        pool = sorted(things[k] for k in by_prob[:max_keep])
    elif len(survivors) > max_keep:  # the top-k, joined in probability order
        pool = [things[k] for k in by_prob if probs[k] >= cut][:max_keep]
    else:
        pool = sorted(things[k] for k in survivors)
    subsets = [c for r in range(1, len(pool) + 1) for c in combinations(pool, r)]
    embs = F.normalize(subset_embs(subsets).double(), dim=-1)
    if embs.shape[0] != len(subsets):
        raise InvalidInput(f"{embs.shape[0]} subset embeddings for {len(subsets)} subsets")
    best = subsets[int(torch.argmax(embs @ img))]  # argmax returns the first maximum
    return sorted(set(best) | set(keep_stuff))


def _features(out) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _size_hw(size) -> tuple[int, int] | None:
    """(height, width) of a processor size setting (dict, SizeDict or int), None when it has none."""
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    if get("height") and get("width"):
        return int(get("height")), int(get("width"))
    if get("shortest_edge"):
        return int(get("shortest_edge")), int(get("shortest_edge"))
    return None


class TextEmbeddingCache:
    """Text embeddings of one text model's prompts in a database: table ``txt_<model key>`` of its
    vector store (:class:`protodb.storage.vectors.TextEmbeddingTables`). Appends hold the stores' vector
    lock on that table and skip prompts another process stored meanwhile."""

    def __init__(self, stores: Stores, model_key: str):
        self.stores, self.model_key = stores, model_key
        self.tables = TextEmbeddingTables(stores.vectors)
        self.table = self.tables.name(model_key)

    def get(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """prompt -> (E,) float32 embedding of those of ``prompts`` that are stored."""
        texts, vectors = self.tables.read(self.table, set(prompts))
        return dict(zip(texts, vectors))

    def put(self, prompts: Sequence[str], vectors: np.ndarray) -> int:
        """Store the (N, E) ``vectors`` of ``prompts`` not stored yet; returns how many were added."""
        with self.stores.vector_lock(self.table):
            self.tables.drop_damaged(self.table)  # a damaged row (verify names it) goes; its prompt is re-added
            there = set(self.tables.read(self.table, set(prompts))[0])
            new = [i for i, p in enumerate(prompts) if p not in there]
            if new:
                self.tables.add(self.table, [prompts[i] for i in new], np.asarray(vectors)[new])
        return len(new)


class ClipPrefilter:
    """A transformers CLIP model (hub id or local folder with the model, tokenizer and image processor).

    The image processor is used for its settings only (input size, mean, std, resampling filter): images
    are squashed to the input size, not resized and centre-cropped (:meth:`pixel_values`).

    stores: the database whose :class:`TextEmbeddingCache` keeps the class prompts' text embeddings
    across segmenters and processes (None: kept in this object only). ``computed`` counts the class
    prompts this object embedded itself (neither remembered nor found in the database).
    """

    def __init__(self, model_path: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, revision: str | None = None, batch: int = 256,
                 stores: Stores | None = None):
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
        p = self.processor
        side = int(self.model.config.vision_config.image_size)
        self.input_size = (_size_hw(getattr(p, "crop_size", None)) if getattr(p, "do_center_crop", True) else None) \
            or _size_hw(getattr(p, "size", None)) or (side, side)  # (height, width)
        self.mean = np.asarray(getattr(p, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073), np.float32)
        self.std = np.asarray(getattr(p, "image_std", None) or (0.26862954, 0.26130258, 0.27577711), np.float32)
        self.rescale = float(getattr(p, "rescale_factor", None) or 1 / 255)
        resample = getattr(p, "resample", None)
        self.resample = PIL.Image.Resampling(int(resample)) if resample is not None else PIL.Image.Resampling.BICUBIC
        self.source, self.revision = src, revision
        self.computed = 0
        self._class_embs: dict[str, torch.Tensor] = {}  # class prompt -> (E,) embedding
        self._stacked: tuple[tuple[str, ...], torch.Tensor] | None = None
        self._cache: TextEmbeddingCache | None = None
        if stores is not None:
            self._cache = TextEmbeddingCache(stores, self.model_key())

    def model_key(self) -> str:
        """sha256 naming this text model: its weight files' hash (or its parameters' when the files are not
        found), its tokenizer (class, vocabulary size, maximum length) and the dtype embeddings come in."""
        tok = self.tokenizer
        return sha256_json({"weights": pretrained_hash(self.source, self.revision, [""], [self.model]),
                            "tokenizer": [type(tok).__name__, len(tok), int(tok.model_max_length)],
                            "dtype": str(self.dtype).removeprefix("torch.")})

    def pixel_values(self, image) -> torch.Tensor:
        """PIL image -> (1, 3, h, w) float32 CLIP input: the WHOLE image resized to the processor's input
        size (h, w) ignoring its aspect ratio (processor's resampling filter), scaled by its rescale factor
        (1/255) and normalised with its mean and std."""
        h, w = self.input_size
        arr = np.asarray(image.convert("RGB").resize((w, h), self.resample), dtype=np.float32) * self.rescale
        arr = (arr - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]

    @torch.no_grad()
    def image_embedding(self, image) -> torch.Tensor:
        """PIL image -> (E,) float32 L2-normalised embedding of the squashed image (:meth:`pixel_values`)."""
        out = self.model.get_image_features(pixel_values=self.pixel_values(image).to(self.device, self.dtype))
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
    def class_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        """(len, E) float32 L2-normalised text embeddings of the class prompts ``"a {name}"``: remembered
        here, else read from the database, else computed (:meth:`text_embeddings`, in batches, in the
        order given) and stored there."""
        key = tuple(names)
        if self._stacked is not None and self._stacked[0] == key:
            return self._stacked[1]
        prompts = [class_prompt(n) for n in names]
        missing = [p for p in dict.fromkeys(prompts) if p not in self._class_embs]
        if missing and self._cache is not None:
            for p, v in self._cache.get(missing).items():
                self._class_embs[p] = torch.from_numpy(np.array(v, np.float32)).to(self.device)
            missing = [p for p in missing if p not in self._class_embs]
        if missing:
            embs = self.text_embeddings(missing)
            self.computed += len(missing)
            self._class_embs.update(zip(missing, embs))
            if self._cache is not None:
                try:
                    self._cache.put(missing, embs.cpu().numpy())
                except Exception as err:  # noqa: BLE001 - a read-only database only costs recomputing later
                    log.warning("could not store %d CLIP text embeddings in the database (%s); they are kept "
                                "for this process only", len(missing), str(err).splitlines()[0][:160] if str(err)
                                else type(err).__name__)
        out = torch.stack([self._class_embs[p] for p in prompts]) if prompts else torch.zeros(0)
        self._stacked = (key, out)
        return out

    def warm(self, names: Sequence[str], stuff: Sequence[bool]) -> int:
        """Have the thing classes' prompt embeddings at hand before the first image (a segmenter's start);
        returns how many had to be computed."""
        before = self.computed
        self.class_embeddings([n for n, s in zip(names, stuff) if not s])
        return self.computed - before

    @torch.no_grad()
    def probabilities(self, image, names: Sequence[str]) -> torch.Tensor:
        """(N,) float32 softmax over ``names`` of the raw cosines between the image and ``"a {name}"``
        (no logit scale). :meth:`select` applies it to the thing classes only."""
        img = self.image_embedding(image)
        return torch.softmax(self.class_embeddings(names) @ img, dim=0).cpu()

    @torch.no_grad()
    def select(self, image, names: Sequence[str], stuff: Sequence[bool], max_keep: int = 10) -> list[int]:
        """Indices (sorted) of the classes to match in ``image`` (PIL): the best-matching subset of the
        likely thing classes plus every stuff class (:func:`choose_classes`). ``max_keep`` (1..16) bounds
        the survivors, hence the subsets scored (2^max_keep - 1)."""
        if len(names) != len(stuff):
            raise InvalidInput(f"{len(names)} class names but {len(stuff)} stuff flags")
        if not 1 <= max_keep <= 16:
            raise InvalidInput(f"max_keep must be between 1 and 16; got {max_keep}")
        things = [n for n, s in zip(names, stuff) if not s]
        if not things:
            return [i for i, s in enumerate(stuff) if s]
        img = self.image_embedding(image)
        thing_embs = self.class_embeddings(things)
        subset_embs = lambda subsets: self.text_embeddings(  # noqa: E731
            [subset_prompt([names[i] for i in s]) for s in subsets])
        return choose_classes(img, thing_embs, list(stuff), subset_embs, max_keep=max_keep)
