"""Thing/stuff labels for thousands of names: the lexicon and the datasets' splits first, then the LLM
in batches with a bounded request count, against a real chat-completions server on 127.0.0.1."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from protodb.api import ProtoDB
from protodb.errors import InvalidInput
from protodb.thing_stuff import (
    LLMAnswerError,
    LLMBatchAborted,
    LLMClient,
    build_batch_prompt,
    classify,
    classify_many_with_llm,
    parse_batch_answer,
)
from protodb_cli.main import app

runner = CliRunner()
_BATCH = re.compile(r"as a JSON list:\n(\[.*\])\nAnswer", re.DOTALL)
_SINGLE = re.compile(r'Is "(.+)" a thing or stuff\?')


def truth(name: str) -> str:
    """What the fake model knows: 'material ...' is stuff, everything else a thing."""
    return "stuff" if name.startswith("material") else "thing"


class _Handler(BaseHTTPRequestHandler):
    """OpenAI chat-completions, answering batch prompts with a JSON object and single prompts with a
    word; ``server.mode`` decides how it misbehaves."""

    def log_message(self, *args):
        pass

    def _send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self):  # noqa: N802
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        with srv.lock:
            srv.requests.append(body)
            number = len(srv.requests)
        if self.path != "/v1/chat/completions":
            return self._send(404, b"{}")
        if srv.fail_after is not None and number > srv.fail_after:
            return self._send(500, b'{"error": "overloaded"}')
        prompt = body["messages"][-1]["content"]
        batch = _BATCH.search(prompt)
        if batch:
            names = json.loads(batch.group(1))
            srv.batches.append(names)
            answer = {n: truth(n) for n in names}
            if srv.mode == "drop_one" and len(names) > 1:
                answer.pop(names[-1])
            elif srv.mode == "first_answer_wrong" and number == 1:
                answer = {n: ("stuff" if truth(n) == "thing" else "thing") for n in names}
                answer[names[0]] = "maybe"  # one bad value: the whole answer must be refused
            elif srv.mode == "extra_key" and number == 1:
                answer["a name nobody asked about"] = "thing"
            elif srv.mode == "poison":
                answer = {n: ("dunno" if n == srv.poison else v) for n, v in answer.items()}
            content = json.dumps(answer)
            if srv.fenced:
                content = f"<think>easy</think>\n```json\n{content}\n```"
        else:
            name = _SINGLE.search(prompt).group(1)
            srv.singles.append(name)
            content = "no idea" if name == srv.poison else truth(name)
        reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                              "finish_reason": "stop"}]}
        return self._send(200, json.dumps(reply).encode())


@pytest.fixture()
def llm():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.lock = threading.Lock()
    server.requests, server.batches, server.singles = [], [], []
    server.mode, server.fenced, server.poison, server.fail_after = "ok", False, None, None
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def client(server) -> LLMClient:
    return LLMClient(server.base_url, "batch-model", timeout=10)


NAMES = [f"{'material' if i % 3 == 0 else 'object'} {i}" for i in range(1000)]


def test_1000_names_in_20_requests(llm):
    llm.fenced = True  # reasoning block and ```json fence around the object are fine
    stored = []
    report = classify_many_with_llm(client(llm), NAMES, batch_size=50,
                                    on_batch=lambda labels, failed: stored.append(len(labels)))
    assert report.requests == len(llm.requests) == 20 == math.ceil(len(NAMES) / 50)
    assert [len(b) for b in llm.batches] == [50] * 20 and not llm.singles
    assert sum(llm.batches, []) == NAMES  # each name asked once, in order
    assert stored == [50] * 20 and not report.failed
    assert {n: lab.kind for n, lab in report.labels.items()} == {n: truth(n) for n in NAMES}
    label = report.labels["material 0"]
    assert (label.source, label.model) == ("llm", "batch-model")
    assert label.prompt == build_batch_prompt(NAMES[:50]) and json.loads(label.raw_answer) == {"material 0": "stuff"}
    body = llm.requests[0]
    assert body["model"] == "batch-model" and body["temperature"] == 0.0 and 64 < body["max_tokens"] < 2000


def test_a_malformed_answer_is_split_and_asked_again_never_taken_in_part(llm):
    llm.mode = "drop_one"  # every answer about more than one name misses a name
    report = classify_many_with_llm(client(llm), NAMES[:100], batch_size=50)
    assert {n: lab.kind for n, lab in report.labels.items()} == {n: truth(n) for n in NAMES[:100]}
    # each batch of 50 is split down to single names: 2 * 50 - 1 requests per batch, all bounded
    assert report.requests == len(llm.requests) == 2 * (2 * 50 - 1)
    assert report.requests <= 2 * (3 * 50 - 1)
    assert sorted(len(b) for b in llm.batches if len(b) == 1) == [1] * 100


def test_one_bad_value_rejects_the_whole_answer(llm):
    llm.mode = "first_answer_wrong"  # answer 1: every kind flipped and one 'maybe'
    report = classify_many_with_llm(client(llm), NAMES[:40], batch_size=40)
    assert {n: lab.kind for n, lab in report.labels.items()} == {n: truth(n) for n in NAMES[:40]}
    assert report.requests == 3  # the bad answer, then two halves answered well
    assert [len(b) for b in llm.batches] == [40, 20, 20]


def test_an_answer_with_a_name_nobody_asked_about_is_refused(llm):
    llm.mode = "extra_key"
    report = classify_many_with_llm(client(llm), NAMES[:10], batch_size=10)
    assert report.requests == 3 and len(report.labels) == 10


def test_a_name_without_a_usable_answer_fails_alone(llm):
    llm.mode, llm.poison = "poison", "object 7"
    report = classify_many_with_llm(client(llm), NAMES[:20], batch_size=20)
    assert set(report.failed) == {"object 7"} and "dunno" in report.failed["object 7"]
    assert "no idea" in report.failed["object 7"]
    assert len(report.labels) == 19 and "object 7" not in report.labels
    assert llm.singles == ["object 7"]  # the one-name prompt, once
    # 20 -> 10 + 10 -> the half with 'object 7' splits down to it: 1 + 2 + 2 + 2 + 2 + 1 single
    assert report.requests == len(llm.requests) <= 3 * 20 - 1


def test_an_endpoint_that_fails_twice_stops_the_run_and_keeps_what_was_answered(llm):
    llm.fail_after = 3
    stored = {}
    with pytest.raises(LLMBatchAborted, match="failed twice") as err:
        classify_many_with_llm(client(llm), NAMES[:50], batch_size=10, on_batch=lambda lab, bad: stored.update(lab))
    assert len(err.value.report.labels) == 30 == len(stored)
    assert err.value.report.requests == len(llm.requests) == 5  # 3 answered, then one retry


def test_parse_batch_answer_rules():
    assert parse_batch_answer('{"a": "Thing", "b": " STUFF "}', ["a", "b"]) == {"a": "thing", "b": "stuff"}
    for bad in ('["thing", "stuff"]', '{"a": "thing"}', '{"a": "thing", "b": "stuff", "c": "thing"}',
                '{"a": "thing", "b": 1}', "a: thing, b: stuff", '{"a": "things", "b": "stuff"}'):
        with pytest.raises(LLMAnswerError):
            parse_batch_answer(bad, ["a", "b"])
    with pytest.raises(InvalidInput, match="batch size"):
        classify_many_with_llm(LLMClient("http://127.0.0.1:9/v1", "m"), ["a"], batch_size=0)


def test_single_class_behaviour_is_unchanged(llm):
    label = classify("material x", client=client(llm))
    assert (label.kind, label.source) == ("stuff", "llm") and len(llm.requests) == 1
    assert llm.singles == ["material x"] and not llm.batches


# --- through the catalog and the CLI -----------------------------------------------------------------


def cli(*args, ok=True, env=None):
    result = runner.invoke(app, [str(a) for a in args], env=env)
    if ok:
        assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def _label_rows(home):
    with sqlite3.connect(home / "catalog.sqlite") as con:
        return con.execute("select count(*) from class_labels").fetchone()[0], \
            con.execute("select name, kind from classes order by name").fetchall()


def test_vocab_label_lexicon_datasets_then_llm_batches(llm, tmp_path):
    home = tmp_path / "db"
    names = [f"material {i}" for i in range(60)] + [f"object {i}" for i in range(60)] + ["sky", "grass", "zucchini"]
    (tmp_path / "v.txt").write_text("\n".join(names), encoding="utf-8")
    cli("vocab", "create", "v", "--from-file", tmp_path / "v.txt", "--db", home)
    env = {"PROTODB_LLM_BASE_URL": llm.base_url, "PROTODB_LLM_MODEL": "batch-model"}
    out = json.loads(cli("vocab", "label", "v", "--batch-size", "50", "--db", home, "--json", env=env).stdout)
    assert out == {"vocabulary": "v", "classes": 123, "already": 0, "lexicon": 2, "dataset": 1, "llm": 120,
                   "left": 0, "changed": 60, "failed": [], "requests": 3, "batch_size": 50,
                   "model": "batch-model"}
    assert len(llm.requests) == 3 and sorted(map(len, llm.batches)) == [20, 50, 50]
    assert not {"sky", "grass", "zucchini"} & set(sum(llm.batches, []))  # the lexicon / LVIS decided those
    db = ProtoDB(home)
    assert db.vocabs.show("v").kinds == tuple(truth(n) if n.startswith(("material", "object")) else
                                              {"sky": "stuff", "grass": "stuff", "zucchini": "thing"}[n]
                                              for n in names)
    hist = db.labels.history("material 3")
    assert [h.source for h in hist.history] == ["lexicon", "llm"] and hist.kind == "stuff"
    assert hist.history[-1].model == "batch-model" and '"material 3"' in hist.history[-1].prompt
    assert "dataset: the lvis" in db.labels.history("zucchini").history[-1].raw_answer
    # again: everything is decided, nothing is asked, nothing is written
    rows = _label_rows(home)
    again = json.loads(cli("vocab", "label", "v", "--db", home, "--json", env=env).stdout)
    assert (again["already"], again["requests"], again["llm"]) == (121, 0, 0) and len(llm.requests) == 3
    assert _label_rows(home) == rows
    # a label set by hand is never changed by a batch run
    cli("label", "object 1", "--stuff", "--db", home)
    assert db.labels.current("object 1") == "stuff"


def test_vocab_label_with_the_ovdiff_lexicon_decides_what_the_authors_listed(tmp_path, monkeypatch):
    """``vocab label --lexicon ovdiff --lexicon-only``: the authors' stuff are stuff, the things they listed are
    decided things (never asked again), the rest keep the default; a bad lexicon name changes nothing."""
    monkeypatch.delenv("PROTODB_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("PROTODB_LEXICON", raising=False)
    home = tmp_path / "db"
    (tmp_path / "v.txt").write_text("glass\nearth\nfence\nmaterial 1\n", encoding="utf-8")
    cli("vocab", "create", "v", "--from-file", tmp_path / "v.txt", "--db", home)
    rows = _label_rows(home)
    bad = cli("vocab", "label", "v", "--lexicon", "coco", "--lexicon-only", "--db", home, ok=False)
    assert bad.exit_code != 0 and "unknown lexicon 'coco'" in bad.output and _label_rows(home) == rows
    out = json.loads(cli("vocab", "label", "v", "--lexicon", "ovdiff", "--lexicon-only", "--db", home, "--json").stdout)
    assert (out["lexicon"], out["dataset"], out["left"]) == (2, 1, 1)  # glass, fence / earth / material 1
    db = ProtoDB(home)
    assert db.vocabs.show("v").kinds == ("stuff", "thing", "stuff", "thing")
    assert "ovdiff lexicon lists it as thing" in db.labels.history("earth").history[-1].raw_answer
    again = json.loads(cli("vocab", "label", "v", "--lexicon", "ovdiff", "--lexicon-only", "--db", home, "--json").stdout)
    assert again["already"] == 1  # earth is decided; the stuff stay stuff by the lexicon


def test_vocab_label_without_an_llm_is_one_line_and_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("PROTODB_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("PROTODB_LLM_MODEL", raising=False)
    home = tmp_path / "db"
    cli("vocab", "create", "v", "object a", "object b", "sky", "--db", home)
    rows = _label_rows(home)
    res = cli("vocab", "label", "v", "--db", home, ok=False)
    assert res.exit_code == 1 and res.stderr.count("\n") == 1
    assert "2 class(es) have only the lexicon's default label and no LLM is configured" in res.stderr
    assert _label_rows(home) == rows
    out = json.loads(cli("vocab", "label", "v", "--lexicon-only", "--db", home, "--json").stdout)
    assert (out["left"], out["lexicon"], out["requests"], out["model"]) == (2, 1, 0, None)
    assert _label_rows(home) == rows


def test_vocab_label_of_a_builtin_uses_the_dataset_split_and_creates_its_classes(tmp_path):
    home = tmp_path / "db"
    out = json.loads(cli("vocab", "label", "objects365", "--lexicon-only", "--db", home, "--json").stdout)
    assert out["classes"] == 365 and out["dataset"] + out["lexicon"] + out["left"] == 365
    assert out["dataset"] > 300 and out["requests"] == 0
    db = ProtoDB(home)
    assert db.labels.current("person") == "thing" and db.vocabs.show("objects365").builtin  # not copied


def test_vocab_label_partial_failures_exit_3_and_abort_keeps_batches(llm, tmp_path):
    home = tmp_path / "db"
    (tmp_path / "v.txt").write_text("\n".join(NAMES[:30]), encoding="utf-8")
    cli("vocab", "create", "v", "--from-file", tmp_path / "v.txt", "--db", home)
    env = {"PROTODB_LLM_BASE_URL": llm.base_url, "PROTODB_LLM_MODEL": "batch-model"}
    llm.mode, llm.poison = "poison", "object 4"
    res = cli("vocab", "label", "v", "--batch-size", "10", "--db", home, env=env, ok=False)
    assert res.exit_code == 3 and "no usable LLM label for 'object 4'" in res.stderr
    assert ProtoDB(home).labels.history("object 4").history[-1].source == "lexicon"  # untouched
    # the endpoint dies: answered batches stay, the rerun asks only about the rest
    (tmp_path / "w.txt").write_text("\n".join(NAMES[100:150]), encoding="utf-8")
    cli("vocab", "create", "w", "--from-file", tmp_path / "w.txt", "--db", home)
    llm.mode, llm.poison, llm.requests[:] = "ok", None, []
    llm.fail_after = 2
    res = cli("vocab", "label", "w", "--batch-size", "10", "--db", home, env=env, ok=False)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.exit_code == 1 and len(errors) == 1 and "20 of 50 classes labelled by the LLM were kept" in errors[0]
    llm.fail_after, llm.requests[:], llm.batches[:] = None, [], []
    out = json.loads(cli("vocab", "label", "w", "--batch-size", "10", "--db", home, "--json", env=env).stdout)
    assert (out["already"], out["llm"], out["requests"]) == (20, 30, 3)
    assert sum(llm.batches, []) == NAMES[120:150]
