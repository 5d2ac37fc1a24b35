"""Speed presets (protodb.speed) and the int8 mode: what each resolves to, and int8 extractors for real."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import protodb.device as device_mod
from protodb.device import INT8, choose_dtype, compute_dtype, dtype_name
from protodb.errors import InvalidInput
from protodb.features.cache import extractor_key
from protodb.features.windows import WindowSpec
from protodb.models.extractors import ExtractorSpec
from protodb.models.extractors.loading import load_extractor
from protodb.models.tiny import build_tiny_extractor
from protodb.pipeline.config import AddClassRequest
from protodb.segment.options import SegmentOptions, with_speed
from protodb.speed import PRESETS, speed_preset


@pytest.mark.parametrize("bf16_units", [True, False])
def test_presets_resolve_windows_support_and_dtype(monkeypatch, bf16_units):
    monkeypatch.setattr(device_mod, "cpu_has_fast_bf16", lambda: bf16_units)
    assert list(PRESETS) == ["best", "balanced", "fast"] and speed_preset(None).name == "balanced"  # the default
    cpu = torch.device("cpu")
    assert speed_preset("best").dtype(cpu) == "auto"
    assert speed_preset("balanced").dtype(cpu) == "auto"  # balanced drops the mirror pass, not precision
    assert speed_preset("fast").dtype("cpu") == ("auto" if bf16_units else "int8")
    assert speed_preset("fast").dtype(cpu, "float32") == "float32"  # an explicit dtype wins
    with pytest.raises(InvalidInput, match="unknown speed preset 'turbo'; use one of best, balanced, fast"):
        speed_preset("turbo")

    base = SegmentOptions(vocab="v", windows=WindowSpec(scales=(1.0, 1.5), subpatch=2))
    default = with_speed(base, cpu)  # no preset: the default's passes and dtype, the windows as given
    assert (default.speed, default.windows, default.dtype) == ("balanced", base.windows, "auto")
    custom = base.replace(windows=WindowSpec(sizes=(64,), stride=32, whole=False))
    assert with_speed(custom, cpu).windows == custom.windows  # explicit windows are never the preset's
    fast = with_speed(base.replace(speed="FAST"), cpu)
    assert (fast.speed, fast.windows.sizes, fast.windows.whole) == ("fast", (), True)
    assert (fast.windows.scales, fast.windows.subpatch) == ((1.0, 1.5), 2)  # the rest of the windows kept
    assert fast.dtype == ("auto" if bf16_units else "int8")
    best = with_speed(base.replace(speed="best"), cpu)
    assert best.windows.sizes is None and best.windows.whole and best.dtype == "auto"  # the extractor's windows
    assert best.windows.resolved((224, 112)).sizes == (224,) and best.windows.resolved().sizes == (448, 336)
    assert (best.windows.subpatch, best.windows.scales) == (2, (1.0, 1.5))  # best sets sub-patch sampling
    balanced = with_speed(base.replace(speed="balanced", windows=WindowSpec(subpatch=3)), cpu)
    assert balanced.windows.subpatch == 3  # the others keep the caller's

    req = AddClassRequest("boat", device="cpu")
    assert req.with_speed().support_windows is True and req.with_speed().dtype == "auto"
    quick = req.replace(speed="fast").with_speed()  # support through windows: the prototypes best matches
    assert quick.support_windows is True and quick.dtype == ("auto" if bf16_units else "int8")
    assert req.replace(speed="fast", support_windows=False).with_speed().support_windows is False
    # segment-time passes: none with the mirror; fast also lays the tiles side by side; best samples sub-patches
    assert [(p.tiles_touch, p.mirror, p.subpatch) for p in PRESETS.values()] == [
        (False, False, 2), (False, False, None), (True, False, None)]


def test_int8_dtype_names_and_devices():
    assert choose_dtype(torch.device("cpu"), "int8") is INT8 and dtype_name(INT8) == "int8"
    assert compute_dtype(INT8) == torch.float32 and compute_dtype(torch.bfloat16) == torch.bfloat16
    with pytest.raises(InvalidInput, match="int8 runs on the CPU only"):
        choose_dtype(torch.device("cuda"), "int8")
    with pytest.raises(InvalidInput, match="or int8"):
        choose_dtype(torch.device("cpu"), "int4")


def test_int8_extractor_quantises_linear_layers_and_keeps_features_close(tmp_path):
    spec = build_tiny_extractor(tmp_path / "t")
    fp32, int8 = load_extractor(spec, "cpu", torch.float32), load_extractor(spec, "cpu", "int8")
    assert int8 is not fp32 and (fp32.dtype_label, int8.dtype_label) == ("float32", "int8")
    assert int8.dtype == torch.float32  # inputs stay float32
    linear = [m for m in int8._model.modules() if type(m) is torch.nn.Linear]
    quantised = [m for m in int8._model.modules() if "quantized" in type(m).__module__]
    assert not linear and quantised
    assert any(type(m) is torch.nn.Linear for m in fp32._model.modules())  # the float model is its own
    images = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    a, b = fp32(images), int8(images)
    assert b.shape == a.shape and torch.allclose(b.norm(dim=-1), torch.ones(b.shape[:3]), atol=1e-5)
    cos = (a * b).sum(-1)
    assert cos.mean() > 0.95 and not torch.equal(a, b)
    assert extractor_key(int8) == extractor_key(fp32) + "-int8"  # never the float features' cache entries
    # a qkv facet is hooked on the quantised layer itself
    keys = load_extractor(ExtractorSpec("tiny-key", "tiny", {**spec.config, "facet": "key"}), "cpu", "int8")
    keys32 = load_extractor(ExtractorSpec("tiny-key", "tiny", {**spec.config, "facet": "key"}), "cpu", "float32")
    assert F.cosine_similarity(keys(images), keys32(images), dim=-1).mean() > 0.95
