"""``protodb vocab create NAME --from-file``: name lists from text or JSON files, line-numbered errors,
the database unchanged on error, names deduplicated by the class-name rule; bulk speed."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from typer.testing import CliRunner

from protodb.api import ProtoDB
from protodb.errors import InvalidInput
from protodb.namelists import parse_name_list
from protodb_cli.main import app

runner = CliRunner()


def cli(*args, ok=True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def _catalog_rows(home):
    with sqlite3.connect(home / "catalog.sqlite") as con:
        return {t: con.execute(f"select count(*) from {t}").fetchone()[0]
                for t in ("classes", "class_labels", "vocabularies", "vocabulary_members")}


def test_text_file_with_comments_blank_lines_pins_and_duplicates(tmp_path):
    home = tmp_path / "db"
    names = tmp_path / "names.txt"
    names.write_text("# my classes\n\nCat\n  dog  \nguinea   pig\n# again:\ncat\nboat@3\nDOG\n", encoding="utf-8")
    out = json.loads(cli("vocab", "create", "pets", "--from-file", names, "--db", home, "--json").stdout)
    assert out["classes"] == ["cat", "dog", "guinea pig", "boat@3"]
    assert out["version"] == 1 and out["builtin"] is False and out["from_file"] == str(names)
    assert out["duplicates"] == [{"line": 7, "text": "cat", "same_as_line": 3},
                                 {"line": 9, "text": "DOG", "same_as_line": 4}]
    assert ProtoDB(home).vocabs.show("pets").classes == ("cat", "dog", "guinea pig", "boat@3")
    human = cli("vocab", "create", "pets2", "--from-file", names, "--db", home)
    assert "created pets2 (version 1, 4 classes)" in human.stderr
    assert "2 duplicate name(s) kept once (line 7 'cat' is the class of line 3)" in human.stderr


def test_json_list_file_and_stdin(tmp_path):
    home = tmp_path / "db"
    names = tmp_path / "names.json"
    names.write_text('[\n  "Traffic Light",\n  "sky",\n\n  "traffic light"\n]\n', encoding="utf-8")
    out = json.loads(cli("vocab", "create", "street", "--from-file", names, "--db", home, "--json").stdout)
    assert out["classes"] == ["traffic light", "sky"]
    assert out["duplicates"] == [{"line": 5, "text": "traffic light", "same_as_line": 2}]
    res = runner.invoke(app, ["vocab", "create", "piped", "--from-file", "-", "--db", str(home), "--json"],
                        input="road\nsidewalk\n")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["classes"] == ["road", "sidewalk"]


@pytest.mark.parametrize(("content", "expected"), [
    ("cat\ndog\nbad/name\nfish\n", "line 3: class name 'bad/name' may not contain '/'"),
    ("cat\n\n\n# c\na, b\n", "line 5: class name 'a, b' may not contain ','"),
    ("cat\n@2\n", "line 2: reference '@2' has no class name"),
    ("boat@2\nfish\nboat@3\n", "line 3: 'boat@3' names class 'boat' again, pinned differently from line 1"),
    ('[\n "cat",\n 42\n]', "line 3: item 2 is 42, not a class name"),
    ('[\n "cat",\n "dog"\n', "line 4: not a JSON list of names"),
    ('{"cat": 1}', "line 1: a JSON name list is a list of strings, not dict"),
    ("# nothing\n\n", "has no class names"),
    ("x" * 201 + "\n", "line 1: class name is 201 characters; the limit is 200"),
])
def test_bad_lines_are_one_error_line_and_the_database_is_unchanged(tmp_path, content, expected):
    home = tmp_path / "db"
    cli("vocab", "create", "before", "cat", "--db", home)
    rows = _catalog_rows(home)
    bad = tmp_path / "bad.txt"
    bad.write_text(content, encoding="utf-8")
    res = cli("vocab", "create", "after", "--from-file", bad, "--db", home, ok=False)
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.stderr
    assert str(bad) in lines[0] or "no class names" in lines[0]
    assert _catalog_rows(home) == rows
    with pytest.raises(Exception, match="no vocabulary 'after'"):
        ProtoDB(home).vocabs.show("after")


def test_bad_file_never_creates_a_database_and_other_refusals(tmp_path):
    home = tmp_path / "fresh"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"cat\n\xff\xfedog\n")
    res = cli("vocab", "create", "v", "--from-file", bad, "--db", home, ok=False)
    assert res.exit_code == 1 and "line 2: not UTF-8 text" in res.stderr
    assert not home.exists()
    res = cli("vocab", "create", "v", "--from-file", tmp_path / "missing.txt", "--db", home, ok=False)
    assert res.exit_code == 1 and "no file" in res.stderr and not home.exists()
    good = tmp_path / "good.txt"
    good.write_text("cat\n", encoding="utf-8")
    res = cli("vocab", "create", "v", "cat", "--from-file", good, "--db", home, ok=False)
    assert res.exit_code == 1 and "not both" in res.stderr and not home.exists()
    res = cli("vocab", "create", "v", "--db", home, ok=False)
    assert res.exit_code == 1 and "--from-file names.txt" in res.stderr and not home.exists()
    res = cli("vocab", "create", "bad name!", "--from-file", good, "--db", home, ok=False)
    assert res.exit_code == 1 and "is not valid" in res.stderr and not home.exists()
    cli("vocab", "create", "v", "--from-file", good, "--db", home)
    rows = _catalog_rows(home)
    res = cli("vocab", "create", "v", "--from-file", good, "--db", home, ok=False)
    assert res.exit_code == 1 and "vocabulary 'v' exists" in res.stderr
    assert _catalog_rows(home) == rows


def test_a_builtin_list_exported_as_text_round_trips(tmp_path):
    """LVIS as the dataset writes it (underscores kept: the class-name rule does not rewrite them) and
    as the built-in vocabulary names it."""
    from protodb.vocabularies import load_builtin

    lvis = load_builtin("lvis")
    home = tmp_path / "db"
    (tmp_path / "clean.txt").write_text("\n".join(lvis["classes"]), encoding="utf-8")
    out = json.loads(cli("vocab", "create", "my-lvis", "--from-file", tmp_path / "clean.txt", "--db", home,
                         "--json").stdout)
    assert out["classes"] == lvis["classes"] and out["duplicates"] == []
    assert len(out["classes"]) == 1203
    raw = parse_name_list("\n".join(lvis["dataset_names"]))
    assert raw.refs[135] == "bow_(weapon)" and len(raw.refs) == 1203


def test_twenty_thousand_names_take_seconds_not_minutes(tmp_path):
    home = tmp_path / "db"
    names = tmp_path / "big.txt"
    names.write_text("\n".join(f"class {i}" for i in range(20_000)), encoding="utf-8")
    start = time.monotonic()
    cli("vocab", "create", "big", "--from-file", names, "--db", home, "-q")
    elapsed = time.monotonic() - start
    assert _catalog_rows(home) == {"classes": 20_000, "class_labels": 20_000, "vocabularies": 1,
                                   "vocabulary_members": 20_000}
    vocab = ProtoDB(home).vocabs.show("big")
    assert vocab.classes[0] == "class 0" and vocab.classes[-1] == "class 19999" and set(vocab.kinds) == {"thing"}
    assert elapsed < 60, elapsed  # one INSERT per table, not one flush per class (minutes before)


def test_parse_name_list_api():
    names = parse_name_list("Sky\nsky\nroad\n", "x.txt")
    assert names.refs == ("sky", "road") and names.lines == (1, 3)
    assert [d.to_dict() for d in names.duplicates] == [{"line": 2, "text": "sky", "same_as_line": 1}]
    with pytest.raises(InvalidInput, match=r"^x.txt line 2: "):
        parse_name_list("ok\nno@\n", "x.txt")
