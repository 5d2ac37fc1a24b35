"""The CLIP pre-filter's class prompt embeddings are computed once per text model and kept in the database
(a LanceDB table per model), not per image or per segmenter start: a second segmenter, in this process or
another, computes none, and segments exactly as an uncached pre-filter does. Tiny random-weight CLIP, real
SQLite + LanceDB database of synthetic sets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import protodb
from protodb.segment.options import SegmentOptions
from protodb.segment.prefilter import ClipPrefilter, TextEmbeddingCache, class_prompt
from protodb.storage.vectors import TextEmbeddingTables
from tests.conftest import child_env, clean_env
from tests.test_vocab_scale import SPEC, _image, build_db

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from protodb.models.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip-cache"))


@pytest.fixture
def counted(monkeypatch):
    """Every prompt list ClipPrefilter.text_embeddings is called with, in order."""
    calls: list[list[str]] = []
    embed = ClipPrefilter.text_embeddings

    def recording(self, prompts):
        calls.append(list(prompts))
        return embed(self, prompts)

    monkeypatch.setattr(ClipPrefilter, "text_embeddings", recording)
    return calls


def _opts(clip) -> SegmentOptions:
    return SegmentOptions(vocab="big", windows=SPEC, background=False, clip_model=str(clip))


def test_second_segmenter_computes_no_class_embedding_and_segments_as_uncached(tmp_path, tiny_clip, counted):
    clean_env()
    db = build_db(tmp_path / "db", distractors=10)
    img = _image()
    s1 = db.segmenter(_opts(tiny_clip))
    names, stuff = s1.vocab.names, s1.vocab.stuff
    things = [n for n, s in zip(names, stuff) if not s]
    assert len(names) == 12 and len(things) >= 10
    prompts = [class_prompt(n) for n in things]
    # first start: the thing classes' prompts, embedded once, in one batch, in vocabulary order
    assert s1.prefilter.computed == len(things) and counted == [prompts]
    tables = TextEmbeddingTables(db.stores.vectors)
    (table,) = tables.names()
    assert table == tables.name(s1.prefilter.model_key())
    stored, vectors = tables.read(table)
    assert stored == prompts and vectors.shape == (len(things), 16)
    counted.clear()
    r1 = s1.segment(img)
    # per image only the subset prompts of step 4 are embedded: one call of 2^k - 1 prompts, all of them
    # made of the kept classes' prompts
    assert s1.prefilter.computed == len(things) and len(counted) == 1
    assert bin(len(counted[0]) + 1).count("1") == 1
    assert all(all(part in prompts for part in p.split(" and ")) for p in counted[0])

    # a second start over another handle of the database: nothing computed at start, same result
    counted.clear()
    db2 = protodb.open(tmp_path / "db")
    s2 = db2.segmenter(_opts(tiny_clip))
    assert s2.prefilter.computed == 0 and counted == []
    r2 = s2.segment(img)
    assert s2.prefilter.computed == 0 and len(counted) == 1
    assert np.array_equal(r1.labels, r2.labels) and r1.kept == r2.kept and np.array_equal(r1.scores, r2.scores)

    # the same segmenter with an uncached pre-filter (embeds the class prompts for every image) agrees
    uncached = ClipPrefilter(tiny_clip)
    s2.prefilter = uncached
    r3 = s2.segment(img)
    assert uncached.computed == len(things)
    assert np.array_equal(r1.labels, r3.labels) and r1.kept == r3.kept
    fresh = uncached.text_embeddings(prompts).numpy()
    np.testing.assert_allclose(vectors, fresh, atol=1e-6)
    kept = uncached.select(img, names, stuff)
    assert tuple(names[i] for i in kept) == r1.kept

    # another process: nothing computed either
    code = ("import json, protodb\n"
            "from tests.test_prefilter_cache import _opts\n"
            "from tests.test_vocab_scale import _image\n"
            f"seg = protodb.open({str(tmp_path / 'db')!r}).segmenter(_opts({str(tiny_clip)!r}))\n"
            "print(json.dumps([seg.prefilter.computed, list(seg.segment(_image()).kept)]))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True,
                          timeout=300, check=True, cwd=str(ROOT))
    computed, kept_there = json.loads(proc.stdout.strip().splitlines()[-1])
    assert computed == 0 and tuple(kept_there) == r1.kept
    assert tables.read(table)[0] == prompts  # nothing stored twice
    db.close()
    db2.close()


def test_new_prompts_and_other_models_are_computed_once(tmp_path, tiny_clip, counted):
    clean_env()
    db = protodb.open(tmp_path / "db")
    pre = ClipPrefilter(tiny_clip, stores=db.stores)
    first = pre.class_embeddings(["cat", "dog", "bird"])
    assert pre.computed == 3 and counted == [["a cat", "a dog", "a bird"]]
    again = ClipPrefilter(tiny_clip, stores=db.stores)
    counted.clear()
    both = again.class_embeddings(["dog", "zebra", "cat", "dog"])  # one new prompt; repeats come once
    assert again.computed == 1 and counted == [["a zebra"]]
    assert torch.equal(both[0], first[1]) and torch.equal(both[2], first[0]) and torch.equal(both[3], first[1])
    assert again.class_embeddings(["dog", "zebra", "cat", "dog"]) is both  # the same list: no work at all
    # another model (other weights): its own table, its own embeddings
    from protodb.models.tiny import build_tiny_clip

    other = ClipPrefilter(build_tiny_clip(tmp_path / "clip-2", seed=1), stores=db.stores)
    assert other.model_key() != pre.model_key()
    counted.clear()
    other_embs = other.class_embeddings(["cat", "dog"])
    assert other.computed == 2 and not torch.allclose(other_embs[0], first[0])
    tables = TextEmbeddingTables(db.stores.vectors)
    assert sorted(tables.names()) == sorted([tables.name(pre.model_key()), tables.name(other.model_key())])
    assert tables.read(tables.name(pre.model_key()))[0] == ["a cat", "a dog", "a bird", "a zebra"]
    # a racing writer that stored the same prompts first: nothing is stored twice
    cache = TextEmbeddingCache(db.stores, pre.model_key())
    assert cache.put(["a cat", "a horse"], np.ones((2, 16), np.float32) / 4) == 1
    got = cache.get(["a cat", "a horse", "a cow"])
    assert sorted(got) == ["a cat", "a horse"] and np.array_equal(got["a cat"], first[0].numpy())
    db.close()


def test_a_database_that_cannot_store_them_still_segments(tmp_path, tiny_clip, monkeypatch, caplog):
    clean_env()
    db = build_db(tmp_path / "db", distractors=4)

    def refuse(self, prompts, vectors):
        raise OSError("read-only file system")

    monkeypatch.setattr(TextEmbeddingCache, "put", refuse)
    with caplog.at_level("WARNING", logger="protodb.segment.prefilter"):
        seg = db.segmenter(_opts(tiny_clip))
    assert seg.prefilter.computed == sum(not s for s in seg.vocab.stuff)
    assert any("could not store" in r.getMessage() and "read-only" in r.getMessage() for r in caplog.records)
    assert seg.segment(_image()).labels.shape == np.asarray(_image()).shape[:2]
    assert TextEmbeddingTables(db.stores.vectors).names() == []
    db.close()


def test_verify_finds_damaged_text_embeddings_and_they_are_embedded_again(tmp_path, tiny_clip, counted):
    """A text cache row that is not unit length (a flipped exponent bit, a hand edit; LanceDB itself refuses
    NaN on write) is named by
    ``verify``, never used by the pre-filter (the prompt is embedded again, exactly as the first time), and
    replaced the next time the cache is written, after which ``verify`` is clean."""
    clean_env()
    db = protodb.open(tmp_path / "db")
    pre = ClipPrefilter(tiny_clip, stores=db.stores)
    first = pre.class_embeddings(["cat", "dog"])
    assert not [d for d in db.verify().damage if d.what == "table"]
    tables = TextEmbeddingTables(db.stores.vectors)
    name = tables.name(pre.model_key())
    tables.add(name, ["a cow"], np.zeros((1, first.shape[1]), np.float32))  # a prompt with only a damaged row
    tables.add(name, ["a cat"], first[:1].numpy() * 3)  # a second, damaged row of a stored prompt
    found = [d for d in db.verify().damage if d.what == "table"]
    assert [d.id for d in found] == [name] and "2 of 4 text embeddings are not finite or not unit length" in found[0].problem
    assert sorted(tables.read(name)[0]) == ["a cat", "a dog"]  # damaged rows are never read
    assert tables.check(name) == ["2 of 4 text embeddings are not finite or not unit length"]
    counted.clear()
    again = ClipPrefilter(tiny_clip, stores=db.stores)
    embs = again.class_embeddings(["cat", "cow"])
    assert counted == [["a cow"]] and torch.equal(embs[0], first[0]) and torch.isfinite(embs[1]).all()
    assert tables.check(name) == [] and not [d for d in db.verify().damage if d.what == "table"]
    assert TextEmbeddingCache(db.stores, pre.model_key()).get(["a cat", "a cow", "a dog"]).keys() == {"a cow", "a dog"}
    db.close()
