"""The large built-in name lists (ADE-847, PASCAL Context-459, LVIS, Objects365, OpenImages): counts,
sources, the dataset-name -> class-name mapping, and their thing/stuff splits."""

from __future__ import annotations

import pytest

from protodb.errors import InvalidInput
from protodb.names import dataset_display_name, normalize_class_name
from protodb.vocabularies import (
    builtin_vocabularies,
    dataset_kind,
    dataset_kinds,
    display_names,
    load_builtin,
)

LARGE = {"ade847": 847, "context459": 459, "lvis": 1203, "objects365": 365, "openimages": 601}


@pytest.mark.parametrize(("name", "count"), sorted(LARGE.items()))
def test_large_lists_have_exact_counts_sources_and_clean_unique_names(name, count):
    doc = load_builtin(name)
    assert len(doc["classes"]) == count == len(doc["dataset_names"])
    assert len(set(doc["classes"])) == count
    # every class is already a protodb class name: the one normaliser leaves it unchanged
    assert [normalize_class_name(c) for c in doc["classes"]] == doc["classes"]
    assert not any("_" in c or "/" in c or "," in c for c in doc["classes"])
    for key in ("source", "license", "names_from", "description"):
        assert isinstance(doc[key], str) and len(doc[key]) > 20, (name, key)
    assert "http" in doc["source"]  # the defining dataset page / file
    if "dataset_ids" in doc:
        assert len(set(doc["dataset_ids"])) == count


@pytest.mark.parametrize("name", sorted(LARGE))
def test_class_names_are_rederived_from_the_dataset_names(name):
    doc = load_builtin(name)
    derived = display_names(doc["dataset_names"], fixes=doc.get("fixes"), synonyms=doc.get("synonyms", False))
    assert derived == doc["classes"]
    # every fix is used, and only where the mechanical rule would say something else
    for raw, fixed in (doc.get("fixes") or {}).items():
        assert raw in doc["dataset_names"]
        assert fixed in doc["classes"]


def test_known_entries_sit_at_their_dataset_positions():
    lvis = load_builtin("lvis")
    ids = {n: i + lvis["label_offset"] for i, n in enumerate(lvis["dataset_names"])}
    assert (ids["aerosol_can"], ids["bow_(weapon)"], ids["bow_(decorative_ribbons)"], ids["box"],
            ids["fishing_rod"], ids["zucchini"]) == (1, 136, 137, 143, 450, 1203)
    assert lvis["classes"][135:137] == ["bow (weapon)", "bow (decorative ribbons)"]
    assert lvis["classes"][lvis["dataset_names"].index("Band_Aid")] == "band aid"
    assert "computer monitor" in lvis["classes"]

    o365 = load_builtin("objects365")
    assert o365["classes"][:3] == ["person", "sneakers", "chair"]
    assert o365["classes"][12] == "cabinet or shelf"  # id 13 'Cabinet/shelf'
    assert o365["classes"][52] == "basket"  # id 53, spelt 'Bakset' by the dataset
    assert o365["classes"][-1] == "table tennis"  # 'Table Tennis ' (trailing space in the dataset)

    oi = load_builtin("openimages")
    assert oi["dataset_ids"][0] == "/m/011k07" and oi["classes"][0] == "tortoise"
    assert oi["dataset_ids"][-1] == "/m/0zvk5" and oi["classes"][-1] == "helmet"
    assert oi["classes"][oi["dataset_ids"].index("/m/0h8n5zk")] == "kitchen & dining room table"

    ade = load_builtin("ade847")
    assert ade["classes"][:5] == ["wall", "building", "sky", "tree", "road"]
    assert (ade["dataset_ids"][0], ade["dataset_ids"][-1]) == (2978, 3148)
    assert ade["classes"][-1] == "adding machine"
    # collisions: a later class takes its first synonym no earlier class has taken
    assert ade["classes"][ade["dataset_names"].index("bag, traveling bag, travelling bag, grip, suitcase")] \
        == "traveling bag"
    assert ade["classes"][ade["dataset_names"].index("pot")] == "pot (2)"  # no synonym left: numbered

    pc = load_builtin("context459")
    assert pc["classes"][:3] == ["accordion", "airplane", "air conditioner"]
    assert pc["classes"][-1] == "wool"


def test_names_shared_with_the_benchmark_vocabularies_are_the_same_classes():
    """ADE-847 and Context-459 contain ADE-150 and Context-59 under the same class names, so a class
    built for one is the class of the other."""
    v = builtin_vocabularies()
    assert set(v["ade20k"]["classes"]) <= set(v["ade847"]["classes"])
    assert set(v["context"]["classes"]) <= set(v["context459"]["classes"])
    assert set(v["voc"]["classes"]) <= set(v["context459"]["classes"])


def test_dataset_display_name_rule():
    assert dataset_display_name("bow_(weapon)") == "bow (weapon)"
    assert dataset_display_name("Cabinet/shelf") == "cabinet or shelf"
    assert dataset_display_name("Tape Measur/ Ruler") == "tape measur or ruler"
    assert dataset_display_name("  Band_Aid ") == "band aid"
    with pytest.raises(InvalidInput):
        dataset_display_name("a@b")


def test_display_names_resolves_collisions_in_dataset_order():
    assert display_names(["Cat", "cat_", "CAT"]) == ["cat", "cat (2)", "cat (3)"]
    assert display_names(["screen, crt screen", "screen, silver screen", "screen"], synonyms=True) == \
        ["screen", "silver screen", "screen (2)"]
    assert display_names(["screen, crt screen", "screen, silver screen"], synonyms=True,
                         fixes={"screen, crt screen": "crt screen"}) == ["crt screen", "screen"]
    with pytest.raises(ValueError, match="collides"):
        display_names(["boat", "ship"], fixes={"ship": "boat"})


def test_thing_stuff_as_the_datasets_define_it():
    lvis, ade, pc = load_builtin("lvis"), load_builtin("ade847"), load_builtin("context459")
    assert dataset_kind(lvis, "bow (weapon)") == "thing"
    assert all(dataset_kind(load_builtin(n), load_builtin(n)["classes"][7]) == "thing"
               for n in ("objects365", "openimages"))
    assert len(ade["thing_stuff"]["stuff"]) == 50
    assert dataset_kind(ade, "sky") == "stuff" and dataset_kind(ade, "road") == "stuff"
    assert dataset_kind(ade, "bed") is None  # ADE-847 leaves the non-stuff classes open
    assert "thing_stuff" not in pc and dataset_kind(pc, "sky") is None
    kinds = dataset_kinds()
    assert kinds["sky"] == ("stuff", ("ade847",))
    assert kinds["aerosol can"] == ("thing", ("lvis",))
    assert kinds["person"][0] == "thing" and {"objects365", "openimages"} <= set(kinds["person"][1])
    # ADE-847 calls 'tent' stuff, Objects365 and OpenImages call it a thing: no dataset answer
    assert "tent" not in kinds
