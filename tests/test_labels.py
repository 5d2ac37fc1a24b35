"""Thing/stuff labels (LLM over a real local HTTP server, lexicon, override) and built-in vocabularies."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from protodb.errors import InvalidInput
from protodb.thing_stuff import (
    Label,
    LLMClient,
    LLMError,
    build_prompt,
    classify,
    classify_with_lexicon,
    classify_with_llm,
    parse_answer,
    stuff_lexicon,
)
from protodb.vocabularies import builtin_vocabularies, load_builtin

CAMVID_README = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid" / "README.md"


# --- a real chat-completions server on 127.0.0.1 -------------------------------------------------


class _ChatHandler(BaseHTTPRequestHandler):
    """Speaks just enough of the OpenAI chat-completions protocol; behaviour set on ``self.server``."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self):  # noqa: N802 - http.server naming
        srv = self.server
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        srv.requests.append({"path": self.path, "headers": dict(self.headers), "raw": raw})
        if self.path != "/v1/chat/completions":
            return self._send(404, b'{"error": "not found"}')
        if srv.api_key is not None and self.headers.get("Authorization") != f"Bearer {srv.api_key}":
            return self._send(401, b'{"error": "bad key"}')
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            return self._send(400, b'{"error": "body is not JSON"}')
        if not isinstance(body.get("model"), str) or not isinstance(body.get("messages"), list):
            return self._send(400, b'{"error": "model and messages are required"}')
        if srv.delay:
            srv.release.wait(srv.delay)  # the test sets release on teardown so the thread ends fast
            return None
        if srv.status != 200:
            return self._send(srv.status, b'{"error": "internal failure"}')
        if srv.raw_reply is not None:
            return self._send(200, srv.raw_reply)
        reply = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": srv.answer},
                         "finish_reason": "stop"}],
        }
        return self._send(200, json.dumps(reply).encode())


@pytest.fixture()
def llm_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    server.daemon_threads = True
    server.block_on_close = False
    server.requests = []
    server.api_key = None
    server.answer = "stuff"
    server.status = 200
    server.delay = 0.0
    server.raw_reply = None
    server.release = threading.Event()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _client(server, **kwargs) -> LLMClient:
    return LLMClient(server.base_url, kwargs.pop("model", "tiny-chat"), **kwargs)


# --- LLM path --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("Stuff.", "stuff"),
        ("thing", "thing"),
        ("The answer is: STUFF", "stuff"),
        ("  Thing!\n", "thing"),
        ("things", "thing"),
        ("<think>a thing or stuff? sky is a region</think>\nstuff", "stuff"),
    ],
)
def test_llm_answer_styles_are_parsed(llm_server, answer, kind):
    llm_server.answer = answer
    label = classify("sky", client=_client(llm_server))
    assert label == Label(kind=kind, source="llm", model="tiny-chat", prompt=build_prompt("sky"), raw_answer=answer)


def test_llm_request_carries_model_prompt_and_key(llm_server):
    llm_server.api_key = "sekret-123"
    llm_server.answer = "thing"
    label = classify_with_llm(_client(llm_server, model="my-model", api_key="sekret-123"), "  boat ")
    assert (label.kind, label.source, label.model) == ("thing", "llm", "my-model")
    assert len(llm_server.requests) == 1
    request = llm_server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sekret-123"
    body = json.loads(request["raw"])
    assert body["model"] == "my-model"
    assert body["temperature"] == 0.0
    assert body["messages"] == [{"role": "user", "content": label.prompt}]
    # the prompt names the class, the two words, and asks for one word
    assert '"boat"' in label.prompt and "thing" in label.prompt and "stuff" in label.prompt
    assert "one word" in label.prompt


def test_no_authorization_header_without_key(llm_server):
    llm_server.answer = "thing"
    classify_with_llm(_client(llm_server), "boat")
    assert "Authorization" not in llm_server.requests[0]["headers"]


def test_wrong_key_is_an_http_error_and_falls_back(llm_server):
    llm_server.api_key = "right"
    label = classify("grass", client=_client(llm_server, api_key="wrong"))
    assert (label.kind, label.source) == ("stuff", "lexicon")
    assert label.raw_answer.startswith("llm error:") and "401" in label.raw_answer


@pytest.mark.parametrize("answer", ["I cannot tell.", "a thing made of stuff", ""])
def test_unusable_answer_falls_back_to_lexicon_with_error_recorded(llm_server, answer):
    llm_server.answer = answer
    client = _client(llm_server)
    with pytest.raises(LLMError):
        classify_with_llm(client, "clouds")
    label = classify("clouds", client=client)
    assert (label.kind, label.source, label.model) == ("stuff", "lexicon", "tiny-chat")
    assert label.prompt == build_prompt("clouds")
    assert label.raw_answer.startswith("llm error: ") and label.raw_answer.endswith("fell back to lexicon")
    assert "\n" not in label.raw_answer


def test_http_500_falls_back(llm_server):
    llm_server.status = 500
    with pytest.raises(LLMError, match="HTTP 500"):
        _client(llm_server).chat([{"role": "user", "content": "hi"}])
    label = classify("person", client=_client(llm_server))
    assert (label.kind, label.source) == ("thing", "lexicon")
    assert "HTTP 500" in label.raw_answer


def test_timeout_falls_back(llm_server):
    llm_server.delay = 5.0
    client = _client(llm_server, timeout=0.3)
    label = classify("road", client=client)
    assert (label.kind, label.source) == ("stuff", "lexicon")
    assert "did not answer within 0.3 s" in label.raw_answer


def test_malformed_reply_and_wrong_path_raise_llm_error(llm_server):
    llm_server.raw_reply = b"<html>not json</html>"
    with pytest.raises(LLMError, match="malformed"):
        _client(llm_server).chat([{"role": "user", "content": "hi"}])
    llm_server.raw_reply = b'{"choices": []}'
    with pytest.raises(LLMError, match="malformed"):
        _client(llm_server).chat([{"role": "user", "content": "hi"}])
    llm_server.raw_reply = None
    wrong = LLMClient(llm_server.base_url.removesuffix("/v1"), "tiny-chat")  # forgot /v1
    with pytest.raises(LLMError, match="HTTP 404"):
        wrong.chat([{"role": "user", "content": "hi"}])


def test_unreachable_server_falls_back():
    client = LLMClient("http://127.0.0.1:9/v1", "tiny-chat", timeout=2.0)  # discard port: refused
    label = classify("boat", client=client)
    assert (label.kind, label.source) == ("thing", "lexicon")
    assert label.raw_answer.startswith("llm error: ")


def test_parse_answer_rejects_neither_and_both():
    assert parse_answer("STUFF") == "stuff"
    for bad in ("maybe", "thing or stuff", "stuffing"):
        with pytest.raises(LLMError):
            parse_answer(bad)


# --- configuration from the environment --------------------------------------------------------


def test_from_env(monkeypatch, llm_server):
    for var in ("PROTODB_LLM_BASE_URL", "PROTODB_LLM_MODEL", "PROTODB_LLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert LLMClient.from_env() is None
    monkeypatch.setenv("PROTODB_LLM_BASE_URL", llm_server.base_url + "/")
    assert LLMClient.from_env() is None  # model still missing
    monkeypatch.setenv("PROTODB_LLM_MODEL", "env-model")
    client = LLMClient.from_env()
    assert (client.base_url, client.model, client.api_key) == (llm_server.base_url, "env-model", None)
    monkeypatch.setenv("PROTODB_LLM_API_KEY", "k-42")
    assert LLMClient.from_env().api_key == "k-42"
    assert "k-42" not in repr(LLMClient.from_env())

    # classify(client="env") uses it
    llm_server.api_key = "k-42"
    llm_server.answer = "Thing."
    label = classify("lamp")
    assert (label.kind, label.source, label.model) == ("thing", "llm", "env-model")
    assert llm_server.requests[-1]["headers"]["Authorization"] == "Bearer k-42"


def test_env_unset_means_lexicon(monkeypatch):
    monkeypatch.delenv("PROTODB_LLM_BASE_URL", raising=False)
    monkeypatch.setenv("PROTODB_LLM_MODEL", "x")
    assert classify("sky") == Label(kind="stuff", source="lexicon")


# --- lexicon and override ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sky", "grass", "road", "clouds", "cloud", "Trees", "wall-brick", "wall brick",
                                  "dirt track", "Dirt_Tracks", "leaf", "skies", "sky-other", "sidewalk", "vegetation"])
def test_lexicon_stuff(name):
    assert classify_with_lexicon(name) == Label(kind="stuff", source="lexicon")


@pytest.mark.parametrize("name", ["boat", "person", "cars", "potted plant", "dog", "bus", "glass", "airplane"])
def test_lexicon_thing(name):
    assert classify_with_lexicon(name) == Label(kind="thing", source="lexicon")


def test_lexicon_file_has_coco_stuff_and_no_duplicates():
    from importlib import resources

    text = resources.files("protodb").joinpath("data", "stuff_lexicon.txt").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0].startswith("#")
    names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert len(names) == len(set(names))
    assert all(n == n.lower() and n == n.strip() for n in names)
    for required in ("banner", "building-other", "building", "desk-stuff", "clouds", "wood", "sky", "road",
                     "earth", "runway", "terrain", "pavement"):
        assert required in stuff_lexicon()
    for not_stuff in ("person", "car", "boat", "dog", "bicycle", "table", "door", "window"):
        assert not_stuff not in stuff_lexicon()


def test_ovdiff_lexicon_is_the_authors_table_and_differs_where_they_decided_otherwise(monkeypatch):
    """``lexicon="ovdiff"``: the authors' 173 decisions (27 stuff); names they left out are things; labels say
    which lexicon decided; ``$PROTODB_LEXICON`` selects it; an unknown name is one clear error."""
    from protodb.thing_stuff import LEXICONS, choose_lexicon, lexicon_kind, lexicon_table

    monkeypatch.delenv("PROTODB_LEXICON", raising=False)
    table = lexicon_table("ovdiff")
    assert LEXICONS == ("builtin", "ovdiff") and len(table) == 172  # 173 entries: __background__ is background
    assert sorted(k for k, v in table.items() if v == "stuff")[:4] == ["background", "bedclothes", "blanket", "ceiling"]
    assert sum(v == "stuff" for v in table.values()) == 26
    ovdiff = Label(kind="stuff", source="lexicon", raw_answer="lexicon: ovdiff")
    for name in ("fence", "road", "sky", "glass", "tray", "trade name"):  # glass and tray are stuff there only
        assert classify_with_lexicon(name, "ovdiff") == ovdiff
    for name in ("earth", "sea", "pavement", "boat", "Zucchini"):  # stuff in ours (not boat), things in theirs
        assert classify_with_lexicon(name, "ovdiff").kind == "thing"
    assert [classify_with_lexicon(n).kind for n in ("earth", "sea", "pavement", "glass")] == ["stuff"] * 3 + ["thing"]
    assert (lexicon_kind("earth", "ovdiff"), lexicon_kind("zucchini", "ovdiff"), lexicon_kind("boat")) == ("thing", None, None)
    monkeypatch.setenv("PROTODB_LEXICON", "OVDiff")
    assert choose_lexicon() == "ovdiff" and classify("glass", client=None) == ovdiff
    assert classify("glass", client=None, lexicon="builtin") == Label(kind="thing", source="lexicon")
    with pytest.raises(InvalidInput, match="unknown lexicon 'coco'; use one of builtin, ovdiff"):
        classify_with_lexicon("sky", "coco")


def test_override_is_manual_and_skips_llm(llm_server):
    llm_server.answer = "thing"
    label = classify("sky", override="Thing", client=_client(llm_server))
    assert label == Label(kind="thing", source="manual")
    assert llm_server.requests == []
    assert classify("boat", override="stuff", client=None) == Label(kind="stuff", source="manual")


def test_bad_inputs():
    with pytest.raises(InvalidInput):
        classify("boat", override="object")
    with pytest.raises(InvalidInput):
        classify("   ", client=None)
    with pytest.raises(InvalidInput):
        LLMClient("localhost:8000/v1", "m")
    with pytest.raises(InvalidInput):
        LLMClient("http://localhost:8000/v1", "")


# --- built-in vocabularies -----------------------------------------------------------------------

EXPECTED = {
    "voc": (20, True, 1),
    "context": (59, True, 1),
    "coco-object": (80, True, 1),
    "ade20k": (150, False, 1),  # file value 0 is "other" (ignored): class i is value i + 1
    "cityscapes": (19, False, 0),
    "camvid": (11, False, 0),
    # the large name lists (tests/test_namelists.py checks their contents and sources)
    "ade847": (847, False, 0),
    "context459": (459, False, 0),
    "lvis": (1203, True, 1),  # category id = i + 1
    "objects365": (365, True, 1),
    "openimages": (601, True, 0),  # the boxable file has 601 rows (announced as 600)
}


def test_vocabulary_counts_and_no_duplicates():
    vocabularies = builtin_vocabularies()
    assert set(vocabularies) == set(EXPECTED)
    for name, (count, background, offset) in EXPECTED.items():
        doc = vocabularies[name]
        assert doc["name"] == name
        assert len(doc["classes"]) == count, name
        assert len(set(doc["classes"])) == count, name
        assert all(c == c.strip() and c for c in doc["classes"]), name
        assert (doc["background"], doc["label_offset"]) == (background, offset), name
        assert doc["description"] and doc["source"]


def test_vocabulary_contents():
    voc = load_builtin("voc")["classes"]
    assert voc[0] == "airplane" and voc[10] == "table" and voc[15] == "potted plant" and voc[19] == "monitor"
    assert not {"aeroplane", "diningtable", "tvmonitor", "pottedplant"} & set(voc)
    assert load_builtin("coco-object")["classes"][:3] == ["person", "bicycle", "car"]
    assert load_builtin("coco-object")["classes"][-1] == "toothbrush"
    assert load_builtin("ade20k")["classes"][:5] == ["wall", "building", "sky", "floor", "tree"]
    assert load_builtin("ade20k")["classes"][-1] == "flag"
    assert load_builtin("cityscapes")["classes"][-1] == "bicycle"
    context = load_builtin("context")["classes"]
    assert context[0] == "airplane" and context[-1] == "wood"
    # every VOC class is a PASCAL Context class, under the same name
    assert set(voc) <= set(context)


def test_load_builtin_copies_and_unknown_names():
    doc = load_builtin("VOC")
    doc["classes"].append("dragon")
    assert len(load_builtin("voc")["classes"]) == 20
    with pytest.raises(InvalidInput, match="available: .*ade20k.*voc"):
        load_builtin("pascal-voc-2007")


def test_camvid_matches_dataset_readme():
    if not CAMVID_README.is_file():
        pytest.skip(f"CamVid README not present at {CAMVID_README} (shared data absent on this machine)")
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|\s*$", CAMVID_README.read_text(), flags=re.MULTILINE)
    table = {int(value): name for value, name in rows if not name.startswith("void")}
    assert table, "no class table found in the CamVid README"
    camvid = load_builtin("camvid")
    assert [camvid["classes"].index(name) + camvid["label_offset"] for name in table.values()] == list(table)
    assert camvid["classes"] == [table[v] for v in sorted(table)]
    void = [int(v) for v, name in rows if name.startswith("void")]
    assert void == [camvid["ignore_index"]]
