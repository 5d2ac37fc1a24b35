"""Feature extractors: specs as data, and real (tiny or shipped) models through the real loading code."""

from __future__ import annotations

import hashlib
import pathlib

import pytest
import torch
import torch.nn.functional as F

from protodb.errors import InvalidInput
from protodb.models.extractors import ExtractorSpec, builtin_specs, focus_onnx_path, onnx_spec, spec_from_dict
from protodb.models.extractors.loading import load_extractor
from protodb.models.tiny import build_tiny_extractor

FOCUS_TOKENS = "/backbone/layernorm/Add_1_output_0"


def _sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _photos(h: int, w: int) -> torch.Tensor:
    """(2, 3, h, w) in [0, 1]: the two photos shipped with scikit-learn (a temple, a flower), resized."""
    from sklearn.datasets import load_sample_image

    photos = [torch.tensor(load_sample_image(n)).permute(2, 0, 1).float() / 255 for n in ("china.jpg", "flower.jpg")]
    return torch.cat([F.interpolate(p[None], size=(h, w), mode="bilinear", antialias=True) for p in photos])


# ------------------------------------------------------------------------------------------- specs


def test_spec_roundtrip_hash_and_validation():
    a = ExtractorSpec("x", "onnx", {"patch_size": 14, "mean": (0.5, 0.5, 0.5), "b": 1, "a": {"z": 1, "y": 2}})
    b = ExtractorSpec("x", "onnx", {"a": {"y": 2, "z": 1}, "b": 1, "mean": [0.5, 0.5, 0.5], "patch_size": 14})
    assert a == b and a.config_hash() == b.config_hash() and hash(a) == hash(b)
    assert spec_from_dict(a.to_dict()) == a
    assert len(a.config_hash()) == 64
    assert ExtractorSpec("x", "onnx", {**a.config, "b": 2}).config_hash() != a.config_hash()
    assert ExtractorSpec("y", "onnx", a.config).config_hash() != a.config_hash()
    d = a.to_dict()
    d["config"]["b"] = 99  # a copy: the spec does not change
    assert a.config["b"] == 1
    with pytest.raises(InvalidInput):
        ExtractorSpec("x", "pytorch", {"patch_size": 14})
    with pytest.raises(InvalidInput):
        ExtractorSpec("x", "timm", {"patch_size": 0})
    with pytest.raises(InvalidInput):
        ExtractorSpec("x", "timm", {"patch_size": 8, "f": object()})
    with pytest.raises(InvalidInput):
        ExtractorSpec("x", "timm", {"patch_size": 8, "mean": [0.5, 0.5]})
    with pytest.raises(InvalidInput):
        spec_from_dict({"name": "x", "kind": "timm"})


def test_builtin_specs_describe_the_paper_models():
    specs = builtin_specs()
    assert {"dino-vitb8", "dinov2-vits14", "dinov2-vitb14", "clip-vitb16", "sd15", "focus-vits14"} <= set(specs)
    assert specs["dino-vitb8"].config["model"] == "vit_base_patch8_224.dino"
    assert specs["dino-vitb8"].config["facet"] == "key" and specs["dino-vitb8"].config["patch_size"] == 8
    assert specs["clip-vitb16"].config["layer"] == -2
    for name, spec in specs.items():
        assert spec.name == name
        cfg = spec.config
        for key in ("patch_size", "input_size", "mean", "std", "facet"):
            assert key in cfg, (name, key)
        assert cfg["input_size"] % cfg["patch_size"] == 0
    assert len({s.config_hash() for s in specs.values()}) == len(specs)


# ------------------------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def focus():
    return load_extractor(builtin_specs()["focus-vits14"])


@pytest.mark.slow
def test_onnx_focus_shapes_norms_hash_and_cache(focus):
    assert focus.dim == 384 and focus.patch_size == 14 and focus.input_size == 224 and focus.fixed_size
    assert focus.weights_hash == _sha256(focus_onnx_path())
    assert load_extractor(builtin_specs()["focus-vits14"]) is focus

    gen = torch.Generator().manual_seed(0)
    square = torch.rand(2, 3, 224, 224, generator=gen)
    out = focus(square)
    assert out.shape == (2, 16, 16, 384) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=-1), torch.ones(2, 16, 16), atol=1e-4)
    assert torch.equal(out, focus(square))  # deterministic
    assert not torch.allclose(out[0], out[1], atol=1e-2)  # depends on the image

    tall = torch.rand(1, 3, 448, 308, generator=gen)
    big = focus(tall)
    assert big.shape == (1, 32, 22, 384)
    assert torch.allclose(big.norm(dim=-1), torch.ones(1, 32, 22), atol=1e-4)
    # Sliding crops start at y in {0, 112, 224} and x in {0, 84}: patches in rows < 8 and columns < 6
    # are covered by the top-left crop alone, so they equal the features of that crop by itself.
    alone = focus(tall[:, :, :224, :224])
    assert torch.allclose(big[:, :8, :6], alone[:, :8, :6], atol=1e-4)
    # Elsewhere overlapping crops are averaged: still close to, but not equal to, a single crop.
    cos = (big[:, :16, :16] * alone).sum(-1)
    assert cos.mean() > 0.8 and cos.min() < 0.9999

    small = focus(torch.rand(1, 3, 112, 140, generator=gen))  # smaller than the graph: padded
    assert small.shape == (1, 8, 10, 384)


@pytest.mark.slow
def test_onnx_focus_features_follow_content(focus):
    photos = _photos(224, 224)
    feats = focus(photos)  # (2, 16, 16, 384)
    flipped_back = focus(photos.flip(-1)).flip(2)
    aligned = (feats * flipped_back).sum(-1).mean()
    misaligned = (feats * flipped_back.flip(2)).sum(-1).mean()
    assert aligned > 0.8 and aligned > misaligned + 0.1  # features move with the content
    assert not torch.allclose(feats, flipped_back, atol=1e-3)
    # Patches of one photo are more alike than patches of two different photos.
    a, b = feats[0].reshape(-1, 384), feats[1].reshape(-1, 384)
    within = ((a @ a.T).mean() + (b @ b.T).mean()) / 2
    assert within > (a @ b.T).mean() + 0.05


def test_onnx_spec_errors(tmp_path):
    with pytest.raises(InvalidInput, match="not found"):
        onnx_spec("mine", tmp_path / "missing.onnx", "out", 224, 14)
    spec = onnx_spec("mine", focus_onnx_path(), "/no/such/tensor", 224, 14)
    assert spec.config["mean"] == [0.485, 0.456, 0.406] and spec.kind == "onnx"
    with pytest.raises(InvalidInput, match="no tensor named"):
        load_extractor(spec)
    with pytest.raises(InvalidInput, match="input_size"):
        load_extractor(onnx_spec("mine", focus_onnx_path(), FOCUS_TOKENS, 448, 14))


def test_onnx_rejects_bad_image_sizes(focus):
    with pytest.raises(InvalidInput, match="multiples of 14"):
        focus(torch.rand(1, 3, 224, 220))
    with pytest.raises(InvalidInput):
        focus(torch.rand(3, 224, 224))


# ------------------------------------------------------------------------------------------- tiny timm


def test_tiny_extractor_deterministic_cached_and_normalised(tmp_path):
    spec_a = build_tiny_extractor(tmp_path / "a")
    spec_b = build_tiny_extractor(tmp_path / "b")
    ext_a, ext_b = load_extractor(spec_a), load_extractor(spec_b)
    assert ext_a is not ext_b  # different checkpoints, different configs
    assert ext_a.weights_hash == ext_b.weights_hash == _sha256(tmp_path / "a" / "model.safetensors")
    assert load_extractor(spec_from_dict(spec_a.to_dict())) is ext_a

    images = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    out = ext_a(images)
    assert out.shape == (2, 8, 6, 32) and out.dtype == torch.float32 and ext_a.dim == 32
    assert torch.allclose(out.norm(dim=-1), torch.ones(2, 8, 6), atol=1e-5)
    assert torch.allclose(out, ext_b(images), atol=1e-6)
    assert not torch.allclose(out[0], out[1], atol=1e-3)

    # The "key" facet is the k part of the last block's qkv projection, heads concatenated.
    model = ext_a._model
    x = (images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    seen = {}
    handle = model.blocks[-1].norm1.register_forward_hook(lambda m, i, o: seen.setdefault("x", o))
    with torch.no_grad():
        model.forward_features(x)
        handle.remove()
        keys = F.linear(seen["x"], model.blocks[-1].attn.qkv.weight[32:64], model.blocks[-1].attn.qkv.bias[32:64])
    expected = F.normalize(keys[:, model.num_prefix_tokens:], dim=-1).reshape(2, 8, 6, 32)
    assert torch.allclose(out, expected, atol=1e-5)

    bf16 = load_extractor(spec_a, dtype=torch.bfloat16)
    assert bf16 is not ext_a
    out16 = bf16(images)
    assert out16.dtype == torch.float32
    assert (out16 * out).sum(-1).mean() > 0.97

    token_spec = ExtractorSpec("tiny-tokens", "tiny", {**spec_a.config, "facet": "token"})
    tokens = load_extractor(token_spec)(images)
    assert tokens.shape == (2, 8, 6, 32) and not torch.allclose(tokens, out, atol=1e-2)

    with pytest.raises(InvalidInput, match="multiples of 8"):
        ext_a(torch.rand(1, 3, 60, 48))


def test_tiny_needs_an_existing_safetensors_checkpoint(tmp_path):
    spec = build_tiny_extractor(tmp_path / "t")
    for bad in (str(tmp_path / "missing.safetensors"), str(tmp_path / "weights.pth")):
        with pytest.raises(InvalidInput, match="safetensors"):
            load_extractor(ExtractorSpec("bad", "tiny", {**spec.config, "checkpoint": bad}))
    with pytest.raises(InvalidInput, match="facet"):
        load_extractor(ExtractorSpec("bad", "tiny", {**spec.config, "facet": "attention"}))


def test_squash_config_feeds_every_crop_at_the_input_size_and_resizes_the_grid_back(tmp_path):
    """``"squash": true`` (the authors' input rule for SD, 512, and CLIP, 448): any crop is resized to
    input_size x input_size, whatever its aspect, and the feature grid back to the crop's own (H/p, W/p);
    a crop already that size is untouched; the builtin SD and CLIP specs ask for it, DINO's do not."""
    plain_spec = build_tiny_extractor(tmp_path / "t")
    cfg = {**plain_spec.config, "input_size": 32}
    plain = load_extractor(ExtractorSpec("tiny-32", "tiny", cfg))
    squashed = load_extractor(ExtractorSpec("tiny-squash", "tiny", {**cfg, "squash": True}))
    assert squashed.squash and not plain.squash
    images = _photos(48, 64)  # (2, 3, 48, 64): grid 6 x 8
    square = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    by_hand = F.interpolate(plain(square).permute(0, 3, 1, 2), size=(6, 8), mode="bilinear", align_corners=False)
    out = squashed(images)
    assert out.shape == plain(images).shape == (2, 6, 8, 32)
    assert torch.allclose(out, F.normalize(by_hand.permute(0, 2, 3, 1), dim=-1), atol=1e-5)
    assert not torch.allclose(out, plain(images), atol=1e-2)  # another input: other features
    assert torch.equal(squashed(square), plain(square))  # the input size itself: no resize
    specs = builtin_specs()
    assert specs["sd15"].config["squash"] and specs["clip-vitb16"].config["squash"]
    assert not any(specs[n].config.get("squash") for n in ("dino-vitb8", "dinov2-vits14", "focus-vits14-tiles-flip"))
    with pytest.raises(InvalidInput, match="'squash' must be true or false"):
        ExtractorSpec("bad", "tiny", {**cfg, "squash": "yes"})
    with pytest.raises(InvalidInput, match="'squash' needs an input_size and no tiles"):
        ExtractorSpec("bad", "tiny", {**cfg, "squash": True, "tile": {"size": 32, "stride": 16}})


def test_flip_config_averages_the_mirror_images_features(tmp_path):
    plain_spec = build_tiny_extractor(tmp_path / "t")
    flip_spec = ExtractorSpec("tiny-flip", "tiny", {**plain_spec.config, "flip": True})
    plain, flipped = load_extractor(plain_spec), load_extractor(flip_spec)
    assert flip_spec.config_hash() != plain_spec.config_hash() and flipped.flip and not plain.flip

    images = _photos(64, 48)
    expected = F.normalize(plain(images) + plain(images.flip(-1)).flip(2), dim=-1)  # mirrored back by hand
    out = flipped(images)
    assert out.shape == (2, 8, 6, 32)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2, 8, 6), atol=1e-5)
    # mirror-consistent: the mirror image's features are the features mirrored (a plain ViT's are not)
    assert torch.allclose(flipped(images.flip(-1)), out.flip(2), atol=1e-5)
    assert not torch.allclose(plain(images.flip(-1)), plain(images).flip(2), atol=1e-2)

    with pytest.raises(InvalidInput, match="'flip' must be true or false"):
        ExtractorSpec("bad", "tiny", {**plain_spec.config, "flip": "yes"})
    assert builtin_specs()["focus-vits14-flip"].config == {**builtin_specs()["focus-vits14-torch"].config,
                                                            "flip": True}

def test_tiled_extractor_averages_its_tiles_and_shares_them_between_windows(tmp_path):
    from protodb.features.windows import Window, WindowSpec, plan_windows

    plain_spec = build_tiny_extractor(tmp_path / "t")
    tiled = load_extractor(ExtractorSpec("tiny-tiles", "tiny", {**plain_spec.config, "tile": {"size": 32, "stride": 16}}))
    plain = load_extractor(plain_spec)
    assert tiled.tile == (32, 16) and plain.tile is None
    image = _photos(48, 64)[0]
    # by hand: 32x32 tiles at rows 0, 16 and columns 0, 16, 32; each patch the mean of its tiles' raw tokens
    raw = {(y, x): plain._features(image[None, :, y:y + 32, x:x + 32])[0] for y in (0, 16) for x in (0, 16, 32)}
    acc, count = torch.zeros(6, 8, 32), torch.zeros(6, 8, 1)
    for (y, x), f in raw.items():
        acc[y // 8:y // 8 + 4, x // 8:x // 8 + 4] += f
        count[y // 8:y // 8 + 4, x // 8:x // 8 + 4] += 1
    assert torch.allclose(tiled(image[None])[0], F.normalize(acc / count, dim=-1), atol=1e-5)
    # an image smaller than a tile is padded with the mean colour, not stretched
    small = tiled(image[None, :, :16, :24])
    assert small.shape == (1, 2, 3, 32) and torch.allclose(small.norm(dim=-1), torch.ones(1, 2, 3), atol=1e-5)

    calls = []
    original = tiled._features
    tiled._features = lambda x: (calls.append(len(x)), original(x))[1]
    plan = plan_windows(48, 64, WindowSpec(short_side=None, sizes=(32, 24), stride=16, whole=True), 8)
    shared = tiled.window_features(image, plan)
    n_shared = sum(calls)
    calls.clear()
    alone = [tiled(image[None, :, w.top:w.top + w.height, w.left:w.left + w.width])[0] for w in plan]
    assert n_shared < sum(calls)  # overlapping windows ran each shared tile once
    for a, b in zip(shared, alone):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    flip = load_extractor(ExtractorSpec("tiny-tiles-flip", "tiny", {**tiled.spec.config, "flip": True}))
    for w, f in zip(plan, flip.window_features(image, plan)):
        assert torch.allclose(f, flip(image[None, :, w.top:w.top + w.height, w.left:w.left + w.width])[0], atol=1e-5)
    # untiled extractors give the same windows through batched calls
    for w, f in zip(plan, plain.window_features(image, plan)):
        assert torch.allclose(f, plain(image[None, :, w.top:w.top + w.height, w.left:w.left + w.width])[0], atol=1e-5)
    assert plain.window_features(image, [Window(0, 0, 48, 64)])[0].shape == (6, 8, 32)

    for bad in ({"size": 30, "stride": 16}, {"size": 32, "stride": 40}, {"size": 32, "stride": 0}):
        with pytest.raises(InvalidInput, match="tile size"):
            load_extractor(ExtractorSpec("bad", "tiny", {**plain_spec.config, "tile": bad}))
    with pytest.raises(InvalidInput, match="'tile' must be"):
        ExtractorSpec("bad", "tiny", {**plain_spec.config, "tile": {"size": "32"}})
    specs = builtin_specs()
    assert specs["focus-vits14-tiles"].config == {**specs["focus-vits14-torch"].config, "input_size": 224,
                                                  "tile": {"size": 224, "stride": 112}}
    assert specs["focus-vits14-tiles-flip"].config == {**specs["focus-vits14-tiles"].config, "flip": True}
    assert specs["focus-vits14-tiles-flip-l4"].config == {**specs["focus-vits14-tiles-flip"].config,
                                                          "layers": [-4, -3, -2, -1]}


# ------------------------------------------------------------------------------------------- CLIP


def test_clip_kind_keys_of_second_to_last_layer(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=2, image_size=32, patch_size=8)
    CLIPVisionModel(config).save_pretrained(tmp_path / "clip")
    spec = ExtractorSpec("tiny-clip", "clip", {
        "model": str(tmp_path / "clip"), "facet": "key", "layer": -2, "patch_size": 8, "input_size": 32,
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]})
    ext = load_extractor(spec)
    assert ext.dim == 32 and ext.patch_size == 8
    assert ext.weights_hash == _sha256(tmp_path / "clip" / "model.safetensors")

    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(2))  # not 32x32: interpolated
    out = ext(images)
    assert out.shape == (2, 6, 8, 32) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=-1), torch.ones(2, 6, 8), atol=1e-5)

    # Same values as k_proj(layer_norm1(input of layer -2)), class token dropped.
    model = CLIPVisionModel.from_pretrained(tmp_path / "clip").eval()
    mean, std = (torch.tensor(spec.config[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    x = (images - mean) / std
    with torch.no_grad():
        hidden = model(pixel_values=x, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states
        layer = getattr(model, "vision_model", model).encoder.layers[-2]
        keys = layer.self_attn.k_proj(layer.layer_norm1(hidden[-3]))
    expected = F.normalize(keys[:, 1:], dim=-1).reshape(2, 6, 8, 32)
    assert torch.allclose(out, expected, atol=1e-5)


# ------------------------------------------------------------------------------------------- SD


@pytest.mark.slow
def test_sd_kind_on_the_tiny_generator(tmp_path):
    from protodb.models.tiny import build_tiny_generator

    folder = tmp_path / "tiny-sd"
    build_tiny_generator(folder)
    config = {"model": str(folder), "facet": "up_block_output", "up_block": 1, "timestep": 200, "prompt": "",
              "seed": 0, "patch_size": 8, "input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}
    ext = load_extractor(ExtractorSpec("tiny-sd", "sd", config))
    assert ext.dim == 32
    assert len(ext.weights_hash) == 64

    images = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(3))
    out = ext(images)
    assert out.shape == (2, 8, 6, 32) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=-1), torch.ones(2, 8, 6), atol=1e-5)
    assert torch.allclose(out[:1], ext(images[:1]), atol=1e-5)  # noise does not depend on the batch
    assert not torch.allclose(out[0], out[1], atol=1e-3)
    # bf16 weights in memory, same files on disk: the hash is of the files (not of the loaded tensors)
    other_t = load_extractor(ExtractorSpec("tiny-sd-t500", "sd", {**config, "timestep": 500}), dtype=torch.bfloat16)
    assert other_t.weights_hash == ext.weights_hash
    assert not torch.allclose(other_t(images), out, atol=1e-3)


# ------------------------------------------------------------------------------------------- hub cache

def _fake_hub_snapshot(cache, repo_id: str, commit: str = "0" * 40):
    """A folder laid out like the Hugging Face hub cache for ``repo_id`` at ``main``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.mark.slow
def test_hub_ids_load_from_the_local_cache_without_network(tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants
    import timm
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, never retry online
    images = torch.rand(1, 3, 32, 48)

    tiny = build_tiny_extractor(tmp_path / "tiny")
    timm_repo = timm.models.get_pretrained_cfg(tiny.config["model"]).hf_hub_id
    shutil.copy(tiny.config["checkpoint"], _fake_hub_snapshot(cache, timm_repo) / "model.safetensors")
    hub_tiny = load_extractor(ExtractorSpec("hub-tiny", "timm", {k: v for k, v in tiny.config.items()
                                                                  if k != "checkpoint"}))
    assert hub_tiny.weights_hash == _sha256(tiny.config["checkpoint"])
    assert torch.allclose(hub_tiny(images), load_extractor(tiny)(images), atol=1e-6)

    torch.manual_seed(0)
    clip_dir = _fake_hub_snapshot(cache, "openai/clip-vit-base-patch16")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(clip_dir)
    clip_spec = ExtractorSpec("hub-clip", "clip", {**builtin_specs()["clip-vitb16"].config, "patch_size": 8})
    hub_clip = load_extractor(clip_spec)
    assert hub_clip.weights_hash == _sha256(clip_dir / "model.safetensors")
    assert hub_clip(images).shape == (1, 4, 6, 32)


@pytest.mark.slow
def test_compile_gives_the_eager_features_and_keeps_hooked_facets_eager(tmp_path, monkeypatch):
    """``PROTODB_COMPILE=1``: a token-facet torch extractor loads through torch.compile (inductor's cache in
    the user cache) and gives the eager features; a hooked facet (qkv keys) stays eager; unset, nothing is."""
    from protodb.models.extractors.loading import clear_extractor_cache

    monkeypatch.setenv("PROTODB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    spec = build_tiny_extractor(tmp_path / "t")
    token = ExtractorSpec("tiny-token", "tiny", {**spec.config, "facet": "token"})
    images = _photos(32, 48)
    eager = load_extractor(token)
    assert not eager.compiled
    want = eager(images)
    clear_extractor_cache()
    monkeypatch.setenv("PROTODB_COMPILE", "1")
    fast, keys = load_extractor(token), load_extractor(spec)
    assert fast.compiled and not keys.compiled and fast is not eager
    assert torch.allclose(fast(images), want, atol=1e-4)
    assert (tmp_path / "cache" / "inductor").is_dir()
    clear_extractor_cache()
