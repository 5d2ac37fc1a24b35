"""The tiny preset: random-weight models built locally, loaded back through the real code paths.

They exist so the whole flow (generation with attention capture, masks, prototypes, segmentation)
runs offline in seconds; what they produce is NOT meaningful, and every set they build says so in its
provenance (``params.preset == "tiny"``). Weights come from fixed seeds, so every build is identical.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pathlib
import shutil
from pathlib import Path

import torch

from protodb.errors import InvalidInput
from protodb.fileio import atomic_dir, atomic_write
from protodb.lazy import lazy_import
from protodb.models.extractors.spec import IMAGENET_MEAN, IMAGENET_STD, TINY_KWARGS, TINY_MODEL, TINY_NAME, ExtractorSpec
from protodb.models.generators import GeneratorSpec, quiet_loading

timm = lazy_import("timm")
safetensors_torch = lazy_import("safetensors.torch")


# --------------------------------------------------------------------------------------------

_TINY_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_TINY_DONE = ".protodb-tiny-complete"


def build_tiny_generator(folder: Path) -> GeneratorSpec:
    """Build (once) a tiny random-weight StableDiffusionPipeline in ``folder`` and return its spec.

    UNet: 2 levels (32, 64 channels), cross-attention at every level and in the mid block, 2 heads,
    cross_attention_dim 32. VAE: 3 levels (latent = image / 4). Text encoder: 2-layer CLIPTextModel
    with the full CLIP vocabulary (49408 tokens, hidden 32; ~6 MB) and a CLIPTokenizer built from the
    real CLIP BPE merges shipped with open_clip, so prompts tokenize exactly like SD's tokenizer.
    Weights come from fixed seeds, so every build is identical. Written to a sibling temporary
    folder and renamed into place, so an interrupted build never looks complete.
    The spec: 64x64 px, 3 DPM-Solver++ steps, guidance 7.5 (so classifier-free guidance runs).
    """
    folder = Path(folder)
    spec = GeneratorSpec(
        name="tiny",
        model_id=str(folder.resolve()),
        pipeline="StableDiffusionPipeline",
        scheduler="DPMSolverMultistepScheduler",
        steps=3,
        guidance=7.5,
        width=64,
        height=64,
    )
    if (folder / _TINY_DONE).is_file():
        return spec
    if folder.exists():
        leftovers = {p.name for p in folder.iterdir()} - {*_TINY_COMPONENTS, "model_index.json"}
        if leftovers:
            raise InvalidInput(f"{folder} exists and is not a tiny generator folder; choose an empty or new folder")
        shutil.rmtree(folder)  # an incomplete earlier build of ours

    with atomic_dir(folder) as tmp:  # an interrupted build never looks complete
        with quiet_loading():
            _tiny_pipeline().save_pretrained(tmp, safe_serialization=True)
        (tmp / _TINY_DONE).write_text("ok\n")
    return spec


def _tiny_pipeline():
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=2,  # diffusers' SD naming: this is the number of heads
            norm_num_groups=16,
        )
        torch.manual_seed(1)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=16,
            sample_size=64,
        )
        torch.manual_seed(2)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                projection_dim=32,
            )
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable unicode character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping  # insertion order: printable bytes first, then the rest (CLIP's id order)


def clip_tokenizer():
    """A transformers CLIPTokenizer with the real CLIP vocabulary (49408 ids, BOS 49406, EOS 49407).

    Built offline from the BPE merges file that ships inside the open_clip wheel: the vocabulary is
    the 256 byte symbols, the same with the end-of-word marker, the first 48894 merges, then the two
    special tokens; this is how CLIP's vocabulary is defined, so ids match SD's tokenizer.
    """
    from transformers import CLIPTokenizer

    found = importlib.util.find_spec("open_clip")
    if found is None or not found.submodule_search_locations:
        raise InvalidInput("open_clip_torch is needed for the CLIP vocabulary; run: pip install open_clip_torch")
    bpe = Path(next(iter(found.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_tiny_extractor(folder: str | os.PathLike, *, seed: int = 0, name: str = TINY_NAME,
                         relative_to: str | os.PathLike | None = None) -> ExtractorSpec:
    """Build a tiny random-weight timm ViT (patch 8, D=32, 2 blocks), save it to
    ``folder/model.safetensors`` (atomically) and return a ``tiny`` spec that loads it back through the
    timm path. Deterministic: the same seed gives byte-identical weights (and the same ``weights_hash``).
    ``relative_to``: record the checkpoint path relative to this folder (the database home), so a
    copied database finds its own copy."""
    folder = pathlib.Path(folder)
    checkpoint = folder / "model.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(TINY_MODEL, pretrained=False, num_classes=0, **TINY_KWARGS)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    data = safetensors_torch.save(state, metadata={"format": "pt"})
    if not checkpoint.is_file() or checkpoint.read_bytes() != data:
        atomic_write(checkpoint, data)
    recorded = checkpoint.resolve()
    if relative_to is not None:
        recorded = recorded.relative_to(pathlib.Path(relative_to).resolve())
    config = {
        "model": TINY_MODEL,
        "model_kwargs": dict(TINY_KWARGS),
        "checkpoint": str(recorded),
        "facet": "key",
        "layer": -1,
        "patch_size": TINY_KWARGS["patch_size"],
        "input_size": TINY_KWARGS["img_size"],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    return ExtractorSpec(name=name, kind="tiny", config=config)


def build_tiny_clip(folder: str | os.PathLike, *, seed: int = 0) -> pathlib.Path:
    """A tiny random-weight transformers CLIP (text and vision towers of 2 layers, width 32, 32 px
    images, projection 16) with the real CLIP tokenizer and an image processor, saved with
    ``save_pretrained`` into ``folder``: a stand-in for ``--clip-model`` (the pre-filter) offline."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = pathlib.Path(folder)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    with quiet_loading():
        model.save_pretrained(folder)
        clip_tokenizer().save_pretrained(folder)
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
