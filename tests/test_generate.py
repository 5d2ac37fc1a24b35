"""Generators as data, loading, seeded batched generation and cross-attention capture.

Everything runs on a tiny random-weight Stable Diffusion pipeline (64x64 px, 3 steps) that the
session fixture builds with save_pretrained and loads back through the real loading code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from protodb.errors import InvalidInput
from protodb.models.generators import GeneratorSpec, builtin_generators, folder_hash, load_pipeline, model_revision
from protodb.models.tiny import build_tiny_generator
from protodb.pipeline.attention import CrossAttentionRecorder
from protodb.pipeline.generate import derive_seed, generate, token_indices


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny model gains nothing from threads; one thread keeps timings steady on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory) -> GeneratorSpec:
    return build_tiny_generator(tmp_path_factory.mktemp("gen") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_spec):
    return load_pipeline(tiny_spec)


def _pixels(gen) -> np.ndarray:
    return np.asarray(gen.image).astype(np.int16)


# ------------------------------------------------------------------------------- specs


def test_builtin_generators_are_complete_specs():
    specs = builtin_generators()
    assert {"sd15", "sd-turbo", "lcm-sd15"} <= set(specs)
    sd15 = specs["sd15"]
    assert sd15.model_id == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert (sd15.scheduler, sd15.steps, sd15.guidance, sd15.width, sd15.height) == (
        "DPMSolverMultistepScheduler",
        30,
        8.0,
        512,
        512,
    )
    assert specs["sd-turbo"].guidance == 0.0 and 1 <= specs["sd-turbo"].steps <= 4
    assert specs["lcm-sd15"].scheduler == "LCMScheduler" and specs["lcm-sd15"].steps == 4
    for spec in specs.values():
        assert "{name}" in spec.prompt_template


def test_spec_hash_replace_and_validation():
    sd15 = builtin_generators()["sd15"]
    assert sd15.spec_hash() == GeneratorSpec.from_dict(sd15.to_dict()).spec_hash()
    faster = sd15.replace(steps=20)
    assert faster.steps == 20 and sd15.steps == 30
    assert faster.spec_hash() != sd15.spec_hash()
    assert len(sd15.spec_hash()) == 64
    with pytest.raises(InvalidInput):
        sd15.replace(width=500)
    with pytest.raises(InvalidInput):
        sd15.replace(prompt_template="a photo")
    with pytest.raises(InvalidInput, match="unknown generator field"):
        GeneratorSpec.from_dict({**sd15.to_dict(), "stpes": 3})


# ------------------------------------------------------------------------------- seeds, tokens


def test_derive_seed_is_stable_across_processes_and_distinct():
    seeds = {(c, i): derive_seed(7, c, i) for c in ("boat", "cat", "red boat") for i in range(50)}
    assert all(0 <= s < 2**31 for s in seeds.values())
    assert len(set(seeds.values())) == len(seeds)
    assert derive_seed(8, "boat", 0) != derive_seed(7, "boat", 0)
    code = "from protodb.pipeline.generate import derive_seed; print(derive_seed(7, 'boat', 3))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(out.stdout) == seeds[("boat", 3)]


def test_token_indices_find_class_tokens(tiny_pipe):
    tok = tiny_pipe.tokenizer
    prompt = "a good picture of a red boat"
    idx = token_indices(tok, prompt, "red boat")
    assert idx == [6, 7]  # BOS a good picture of a | red boat
    ids = tok(prompt)["input_ids"]
    assert tok.convert_ids_to_tokens([ids[i] for i in idx]) == ["red</w>", "boat</w>"]
    assert token_indices(tok, "a boat next to another boat", "boat") == [2, 6]
    with pytest.raises(InvalidInput, match="does not contain"):
        token_indices(tok, "a good picture of a cat", "boat")


# ------------------------------------------------------------------------------- loading


def test_load_pipeline_is_cached_and_shares_models(tiny_spec, tiny_pipe):
    assert load_pipeline(tiny_spec) is tiny_pipe
    assert load_pipeline(tiny_spec.replace(steps=2, guidance=3.0, width=32)) is tiny_pipe
    assert type(tiny_pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    euler = load_pipeline(tiny_spec.replace(scheduler="EulerAncestralDiscreteScheduler"))
    assert euler is not tiny_pipe and euler.unet is tiny_pipe.unet
    assert type(euler.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert type(tiny_pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert tiny_pipe.safety_checker is None


def test_missing_hub_model_is_invalid_input(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    spec = builtin_generators()["sd15"].replace(model_id="protodb-test/not-downloaded")
    with pytest.raises(InvalidInput) as err:
        load_pipeline(spec)
    message = str(err.value)
    assert "protodb-test/not-downloaded" in message and "--generator PATH" in message
    assert "\n" not in message
    assert model_revision(spec) is None


def test_missing_local_folder_is_invalid_input(tmp_path):
    spec = builtin_generators()["sd15"].replace(model_id=str(tmp_path / "nope"))
    with pytest.raises(InvalidInput, match="model_index.json"):
        load_pipeline(spec)


def test_hub_cache_snapshot_loads_offline_and_reports_commit(monkeypatch, tmp_path, tiny_spec):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--protodb-test--tiny"
    shutil.copytree(tiny_spec.model_id, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = tiny_spec.replace(model_id="protodb-test/tiny")
    pipe = load_pipeline(spec)
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"
    assert model_revision(pipe) == commit
    assert model_revision(spec) == commit


def test_local_revision_hashes_weight_contents(tmp_path, tiny_spec, tiny_pipe):
    rev = model_revision(tiny_pipe)
    assert rev.startswith("sha256:") and rev == model_revision(tiny_spec)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_spec.model_id, copy)
    assert folder_hash(copy) == rev
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, same header, one weight byte changed
    weights.write_bytes(bytes(data))
    assert folder_hash(copy) != rev


def test_build_tiny_generator_skips_complete_folder(tiny_spec):
    folder = Path(tiny_spec.model_id)
    before = (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    again = build_tiny_generator(folder)
    assert again == tiny_spec
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == before


# ------------------------------------------------------------------------------- generation


@pytest.mark.parametrize("scheduler", ["default-of-spec", "EulerAncestralDiscreteScheduler"])
def test_images_are_seeded_per_index_alone_or_in_batch(tiny_pipe, tiny_spec, scheduler):
    """Two separate calls (batch of 3, then index 1 alone) must give index 1 the same image."""
    spec = tiny_spec if scheduler == "default-of-spec" else tiny_spec.replace(scheduler=scheduler, steps=2)
    pipe = load_pipeline(spec)  # the ancestral sampler also draws noise at every step
    done = []
    batch = list(generate(pipe, spec, "red boat", [0, 1, 2], base_seed=3, batch_size=3, progress=done.append))
    alone = next(generate(pipe, spec, "red boat", [1], base_seed=3))
    assert done == [1, 2, 3]
    assert [g.index for g in batch] == [0, 1, 2]
    assert [g.seed for g in batch] == [derive_seed(3, "red boat", i) for i in range(3)]
    for g in batch:
        assert g.image.mode == "RGB" and g.image.size == (spec.width, spec.height)
    assert np.abs(_pixels(batch[0]) - _pixels(batch[1])).mean() > 5  # different seeds, different images
    assert alone.seed == batch[1].seed
    assert np.abs(_pixels(alone) - _pixels(batch[1])).max() <= 1
    assert np.allclose(alone.attention, batch[1].attention, atol=1e-4)


def test_attention_maps_shape_range(tiny_pipe, tiny_spec):
    for g in generate(tiny_pipe, tiny_spec, "red boat", [0, 1], base_seed=0, batch_size=2):
        assert g.attention.shape == (tiny_spec.height, tiny_spec.width)
        assert g.attention.dtype == np.float32
        assert g.attention.min() >= 0.0 and g.attention.max() <= 1.0
        assert g.attention.max() > 0.5 and g.attention.std() > 0.01


def test_generation_without_guidance(tiny_pipe, tiny_spec):
    spec = tiny_spec.replace(guidance=0.0, steps=2)
    gens = list(generate(tiny_pipe, spec, "boat", [0, 1], base_seed=0, batch_size=2))
    assert [g.image.size for g in gens] == [(64, 64), (64, 64)]
    assert all(g.attention.max() > 0.5 for g in gens)


# ------------------------------------------------------------------------------- recorder


def _unet_inputs(pipe, prompt: str, cfg: bool):
    """Latents (B, 4, 16, 16), timestep, text embeddings ([uncond, cond] when cfg) for one image."""
    with torch.no_grad():
        cond = pipe.encode_prompt(prompt, "cpu", 1, do_classifier_free_guidance=cfg, negative_prompt="")
    embeds = torch.cat([cond[1], cond[0]]) if cfg else cond[0]
    latents = torch.randn(embeds.shape[0], 4, 16, 16, generator=torch.Generator().manual_seed(0))
    return latents, torch.tensor(500), embeds


def _unet(pipe, latents, t, embeds):
    with torch.no_grad():
        return pipe.unet(latents, t, encoder_hidden_states=embeds).sample


def test_recorder_keeps_unet_output_and_restores_processors(tiny_pipe):
    unet = tiny_pipe.unet
    latents, t, embeds = _unet_inputs(tiny_pipe, "a good picture of a red boat", cfg=True)
    plain = _unet(tiny_pipe, latents, t, embeds)
    before = dict(unet.attn_processors)
    with CrossAttentionRecorder(unet, [6, 7], (16, 16), num_images=1) as rec:
        recorded = _unet(tiny_pipe, latents, t, embeds)
        cross = rec.cross_attention_names()
        assert cross and all(name.endswith("attn2.processor") for name in cross)
        assert all(type(unet.attn_processors[n]) is type(before[n]) for n in before if n not in cross)
        assert rec.calls == len(cross)  # one recording per cross-attention layer
    assert (recorded - plain).abs().max().item() < 1e-5
    assert all(unet.attn_processors[n] is p for n, p in before.items())


def test_recorder_reads_the_conditional_half(tiny_pipe):
    """With CFG the batch is [uncond, cond]: the map must equal the cond-only run's map."""
    latents, t, embeds = _unet_inputs(tiny_pipe, "a good picture of a red boat", cfg=True)
    with CrossAttentionRecorder(tiny_pipe.unet, [7], (16, 16), num_images=1) as rec:
        _unet(tiny_pipe, latents, t, embeds)
        with_cfg = rec.maps()
        rec.reset(num_images=1)
        _unet(tiny_pipe, latents[1:], t, embeds[1:])
        cond_only = rec.maps()
        rec.reset(num_images=1)
        _unet(tiny_pipe, latents[:1], t, embeds[:1])
        uncond_only = rec.maps()
    assert with_cfg.shape == (1, 16, 16) and with_cfg.dtype == torch.float32
    assert torch.allclose(with_cfg, cond_only, atol=1e-5)
    assert not torch.allclose(with_cfg, uncond_only, atol=1e-3)


def test_maps_differ_between_class_tokens(tiny_pipe):
    latents, t, embeds = _unet_inputs(tiny_pipe, "a good picture of a red boat", cfg=False)
    maps = {}
    for name, idx in {"red": [6], "boat": [7]}.items():
        with CrossAttentionRecorder(tiny_pipe.unet, idx, (16, 16), num_images=1) as rec:
            _unet(tiny_pipe, latents, t, embeds)
            maps[name] = rec.maps()
            raw = rec.raw()
        assert maps[name].min() == 0.0 and maps[name].max() == 1.0
        assert (raw >= 0).all()
    assert (maps["red"] - maps["boat"]).abs().max() > 0.05
