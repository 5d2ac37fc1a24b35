"""Cross-attention maps of a class name, recorded while a diffusion UNet denoises.

OVDiff localises the class in each generated image from the UNet's cross-attention: for every
cross-attention layer (``attn2``) and every denoising step, the attention that image positions pay to
the class-name tokens, summed over heads, layers and steps, gives a coarse foreground map.

The recorder swaps the processor of the cross-attention layers only (self-attention keeps its fast
processor), computes the softmax attention explicitly there (the key length is the 77 text tokens,
so this is cheap), and adds the class-token attention of the conditional rows into one running
(B, h, w) sum: nothing per step or per layer is kept.

>>> with CrossAttentionRecorder(pipe.unet, token_indices=[5, 6], latent_size=(64, 64)) as rec:
...     rec.reset(num_images=4)
...     pipe(prompt=[p] * 4, ...)
...     maps = rec.maps()          # (4, 64, 64) float32 in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


class CrossAttentionRecorder:
    """Records class-token cross-attention of a diffusers UNet (context manager).

    unet: a diffusers model with ``attn_processors`` / ``set_attn_processor`` (UNet2DConditionModel).
    token_indices: positions of the class-name tokens in the tokenized prompt (BOS is position 0).
    latent_size: (h, w) of the UNet input; every layer's map is resized to it bilinearly.
    num_images: images per UNet call (B); may be set later with :meth:`reset`.

    Each UNet call's encoder batch must be either [cond x B] (no classifier-free guidance, e.g.
    sd-turbo, LCM) or [uncond x B, cond x B] (diffusers' CFG layout); only the cond rows are recorded.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        token_indices: Sequence[int],
        latent_size: tuple[int, int],
        num_images: int | None = None,
    ) -> None:
        if not token_indices:
            raise ValueError("token_indices must name at least one token")
        self.unet = unet
        self.token_indices = [int(i) for i in token_indices]
        self.latent_size = (int(latent_size[0]), int(latent_size[1]))
        self.num_images = num_images
        self.calls = 0  # cross-attention layer calls recorded since reset
        self._sum: torch.Tensor | None = None
        self._saved: dict[str, object] | None = None
        self._index_cache: dict[torch.device, torch.Tensor] = {}

    # -- installing ------------------------------------------------------------------------
    def cross_attention_names(self) -> list[str]:
        """Processor names (``...attn2.processor``) of the UNet's cross-attention layers."""
        names = []
        for name, module in self.unet.named_modules():
            if getattr(module, "is_cross_attention", False) and hasattr(module, "set_processor"):
                names.append(f"{name}.processor")
        return names

    def install(self) -> CrossAttentionRecorder:
        """Put the recording processor on every cross-attention layer; remember the originals."""
        if self._saved is not None:
            return self
        original = dict(self.unet.attn_processors)
        cross = set(self.cross_attention_names())
        if not cross:
            raise ValueError("the UNet has no cross-attention layers to record")
        processor = _RecordingProcessor(self)
        self.unet.set_attn_processor({k: (processor if k in cross else p) for k, p in original.items()})
        self._saved = original
        return self

    def remove(self) -> None:
        """Restore the original processors."""
        if self._saved is not None:
            self.unet.set_attn_processor(dict(self._saved))
            self._saved = None

    def __enter__(self) -> CrossAttentionRecorder:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()

    # -- results ---------------------------------------------------------------------------
    def reset(self, num_images: int | None = None) -> None:
        """Forget what was recorded; optionally set the number of images of the next UNet calls."""
        if num_images is not None:
            self.num_images = int(num_images)
        self._sum = None
        self.calls = 0

    def raw(self) -> torch.Tensor:
        """(B, h, w) float32: summed class-token attention (heads, tokens, layers, steps)."""
        if self._sum is None:
            raise RuntimeError("nothing recorded yet: run the UNet with the recorder installed")
        return self._sum

    def maps(self) -> torch.Tensor:
        """(B, h, w) float32 in [0, 1]: :meth:`raw` min-max normalised per image (all-zero if flat)."""
        raw = self.raw()
        flat = raw.flatten(1)
        lo = flat.min(dim=1).values[:, None, None]
        span = (flat.max(dim=1).values[:, None, None] - lo).clamp_min(1e-12)
        return ((raw - lo) / span).clamp_(0.0, 1.0)

    # -- called by the processor -----------------------------------------------------------
    def _add(self, probs: torch.Tensor, batch: int) -> None:
        """probs: (batch, heads, N, L) attention probabilities of one layer call."""
        n_img = self.num_images if self.num_images is not None else batch
        if batch == n_img:
            cond = probs
        elif batch == 2 * n_img:
            cond = probs[n_img:]  # diffusers CFG layout: [uncond..., cond...]
        else:
            raise RuntimeError(f"UNet batch {batch} is neither {n_img} nor 2x{n_img} images; call reset(num_images)")
        idx = self._index_cache.get(probs.device)
        if idx is None:
            idx = self._index_cache[probs.device] = torch.tensor(self.token_indices, device=probs.device)
        # (B, heads, N, k) -> (B, N): sum over heads and class tokens, in float32
        amap = cond.index_select(-1, idx).float().sum(dim=(1, 3))
        h, w = _grid(amap.shape[1], self.latent_size)
        amap = amap.view(n_img, 1, h, w)
        if (h, w) != self.latent_size:
            amap = F.interpolate(amap, size=self.latent_size, mode="bilinear", align_corners=False)
        amap = amap[:, 0]
        self._sum = amap if self._sum is None else self._sum + amap.to(self._sum.device)
        self.calls += 1


def _grid(n: int, latent: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) of a layer with n positions: the latent size halved k times (ceil, like convs)."""
    h, w = latent
    while h * w > n and h > 1 and w > 1:
        h, w = (h + 1) // 2, (w + 1) // 2
    if h * w != n:
        raise RuntimeError(f"cannot place {n} attention positions on a grid derived from latent {latent}")
    return h, w


class _RecordingProcessor:
    """Cross-attention processor: explicit softmax attention + recording; same output as AttnProcessor2_0.

    Follows diffusers' Attention semantics: spatial/group norm, norm_cross, norm_q/norm_k, scale,
    upcast_attention/upcast_softmax, additive attention mask, output projection, residual and
    rescale_output_factor.
    """

    def __init__(self, recorder: CrossAttentionRecorder) -> None:
        self.recorder = recorder

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        query = attn.to_q(hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        # (B, heads, N, d) / (B, heads, L, d)
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        dtype = query.dtype
        if attn.upcast_attention:
            query, key = query.float(), key.float()
        # scaling q (N x d) is cheaper than scaling the scores (N x L)
        scores = torch.matmul(query * attn.scale, key.transpose(-1, -2))  # (B, heads, N, L)
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
            scores = scores + mask.view(batch, attn.heads, -1, mask.shape[-1])
        if attn.upcast_softmax:
            scores = scores.float()
        probs = scores.softmax(dim=-1)
        if encoder_hidden_states is not None:
            self.recorder._add(probs, batch)
        out = torch.matmul(probs.to(dtype), value)  # (B, heads, N, d)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(dtype)

        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
