"""Stable Diffusion UNet decoder features (diffusers)."""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from protodb.errors import InvalidInput
from protodb.models.extractors.base import Extractor, capture, from_pretrained, load_error, pretrained_hash
from protodb.models.extractors.spec import ExtractorSpec

class _SDExtractor(Extractor):
    """SD UNet decoder features: VAE latent mean of the image, noised to ``timestep`` with fixed-seed noise
    (the same noise for every image, so results do not depend on the batch), UNet conditioned on the
    embedding of ``prompt`` (empty by default); output of ``up_blocks[up_block]`` resized bilinearly to
    (H/p, W/p). Mean/std in the config map [0, 1] to the VAE's [-1, 1] (0.5 / 0.5)."""

    def __init__(self, spec: ExtractorSpec, unet, vae, scheduler, prompt_embeds: torch.Tensor,
                 weights_hash: str, device: torch.device, dtype: torch.dtype):
        cfg = spec.config
        self._unet, self._vae, self._scheduler = unet, vae, scheduler
        self._prompt_embeds = prompt_embeds
        self._block = unet.up_blocks[cfg.get("up_block", 1)]
        self._timestep = int(cfg.get("timestep", 200))
        self._seed = int(cfg.get("seed", 0))
        dim = self._block.resnets[-1].out_channels
        super().__init__(spec, dim=dim, patch_size=cfg["patch_size"], input_size=cfg.get("input_size"),
                         weights_hash=weights_hash, device=device, dtype=dtype)

    def _noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(self._seed)
        return torch.randn(shape, generator=gen, dtype=torch.float32)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        x = self._normalise(images.to(self.device)).to(self.dtype)
        latents = self._vae.encode(x).latent_dist.mean * self._vae.config.scaling_factor
        noise = self._noise(tuple(latents.shape[1:])).to(latents.device, latents.dtype).expand_as(latents)
        t = torch.full((b,), self._timestep, dtype=torch.long, device=latents.device)
        noisy = self._scheduler.add_noise(latents, noise, t)
        cond = self._prompt_embeds.expand(b, -1, -1)
        fmap = capture(self._block, lambda: self._unet(noisy, t, encoder_hidden_states=cond))
        fmap = F.interpolate(fmap.float(), size=(h // self.patch_size, w // self.patch_size),
                             mode="bilinear", align_corners=False)
        return fmap.permute(0, 2, 3, 1)


def load(spec: ExtractorSpec, device: torch.device, dtype: torch.dtype) -> Extractor:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    cfg = spec.config
    if "model" not in cfg:
        raise InvalidInput(f"extractor {spec.name!r}: config needs 'model' (a hub id or a local folder)")
    src, rev, variant = cfg["model"], cfg.get("revision"), cfg.get("variant")
    # dtype at load time (diffusers warns on a later .to(dtype)); without accelerate, say so to stay quiet
    common = {"revision": rev, "variant": variant, "torch_dtype": dtype,
              "low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}
    try:
        unet = from_pretrained(UNet2DConditionModel, src, subfolder="unet", **common)
        vae = from_pretrained(AutoencoderKL, src, subfolder="vae", **common)
        text_encoder = from_pretrained(CLIPTextModel, src, subfolder="text_encoder", revision=rev, variant=variant)
        tokenizer = from_pretrained(CLIPTokenizer, src, subfolder="tokenizer", revision=rev)
        scheduler = from_pretrained(DDPMScheduler, src, subfolder="scheduler", revision=rev)
    except (OSError, ValueError) as err:
        raise load_error(spec, err, "download the pipeline once with network access or point config "
                                     "'model' at a local folder") from None
    for m in (unet, vae, text_encoder):
        m.eval()
    weights_hash = pretrained_hash(src, rev, ["unet", "vae", "text_encoder"], [unet, vae, text_encoder], variant)
    with torch.no_grad():
        ids = tokenizer(cfg.get("prompt", ""), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        prompt_embeds = text_encoder(ids)[0]
    del text_encoder  # only the prompt embedding is needed from here on
    unet.to(device)
    vae.to(device)
    prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)
    return _SDExtractor(spec, unet, vae, scheduler, prompt_embeds, weights_hash, device, dtype)
