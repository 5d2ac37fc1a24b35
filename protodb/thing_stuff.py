"""Thing/stuff labels for class names.

OVDiff treats "stuff" classes (amorphous regions and materials: sky, grass, road) differently from
"things" (countable objects: boat, person). This module decides which one a class name is, and
records how it decided, so the catalog can keep the provenance (source, model, prompt, raw answer):

1. a manual override ("thing" / "stuff") always wins (``source="manual"``);
2. otherwise an LLM behind any OpenAI-compatible chat-completions endpoint is asked, when one is
   configured (``PROTODB_LLM_BASE_URL`` + ``PROTODB_LLM_MODEL``, optional ``PROTODB_LLM_API_KEY``),
   (``source="llm"``);
3. otherwise, or when the LLM fails, a lexicon decides (``source="lexicon"``): the built-in one, of the stuff
   classes of COCO-Stuff, PASCAL Context, ADE20K, Cityscapes and CamVid, or (``--lexicon ovdiff``,
   ``$PROTODB_LEXICON``) the OVDiff authors' own thing/stuff table (``protodb/data/lexicon_ovdiff.txt``).

When the LLM fails (HTTP error, timeout, malformed reply, an answer that is neither word), the label
falls back to the lexicon and says so: ``source="lexicon"``, ``model`` and ``prompt`` are those of
the failed LLM call, and ``raw_answer`` is ``"llm error: <one line>; fell back to lexicon"``.

Many names at once (a vocabulary of thousands, ``protodb vocab label``): :func:`classify_many_with_llm`
asks about ``batch_size`` names per request (one JSON object per answer, validated); a malformed
answer is never accepted in part: the batch is split in two and each half asked again, down to single
names, which get the one-name prompt once. ``N`` names cost ``ceil(N / batch_size)`` requests when
every answer is usable, and at most ``3 * batch_size - 1`` more for a batch whose answers never are.
An endpoint that fails (HTTP error, timeout, unreachable) is asked once more, then the run stops with
:class:`LLMBatchAborted`, holding what was labelled before.

Only the standard library is used for HTTP (``urllib.request``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Callable, Literal

from protodb.errors import InvalidInput, ProtoDBError

KINDS = ("thing", "stuff")

ENV_BASE_URL = "PROTODB_LLM_BASE_URL"
ENV_MODEL = "PROTODB_LLM_MODEL"
ENV_API_KEY = "PROTODB_LLM_API_KEY"

PROMPT_TEMPLATE = (
    "In image segmentation (as in the COCO-Stuff dataset) every class is either a \"thing\" or "
    "\"stuff\". A thing is a countable object with a well-defined shape, whose individual instances "
    "can be told apart and counted (for example: person, car, boat, cup, dog). Stuff is an amorphous "
    "region or material without a fixed shape or a count (for example: sky, grass, road, water, "
    "wall, sand).\n"
    "Is \"{name}\" a thing or stuff? Answer with exactly one word: thing or stuff."
)

_FALLBACK_NOTE = "fell back to lexicon"


@dataclass(frozen=True)
class Label:
    """How a class name was labelled.

    kind: "thing" or "stuff". source: "llm", "lexicon" or "manual".
    model: the LLM asked (None when none was). prompt: the exact user message sent (None when none).
    raw_answer: the LLM's reply as received; for an LLM failure "llm error: ...; fell back to lexicon".
    """

    kind: str
    source: str
    model: str | None = None
    prompt: str | None = None
    raw_answer: str | None = None


class LLMError(ProtoDBError):
    """The LLM endpoint failed or gave an unusable answer. ``str(err)`` is one line."""


class LLMAnswerError(LLMError):
    """The endpoint answered, but the answer is not usable (asking again, smaller, may help)."""


def _one_line(text: str, limit: int = 200) -> str:
    """Collapse whitespace to single spaces and cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class LLMClient:
    """A minimal client for an OpenAI-compatible ``/chat/completions`` endpoint.

    base_url: the API root including the version, e.g. ``http://localhost:8000/v1``;
    the request goes to ``{base_url}/chat/completions``. api_key: sent as ``Authorization: Bearer``.
    timeout: seconds for connecting and for reading the reply.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 30.0):
        if not base_url or not base_url.strip():
            raise InvalidInput(f"LLM base url is empty; set {ENV_BASE_URL}, e.g. http://localhost:8000/v1")
        if not base_url.startswith(("http://", "https://")):
            raise InvalidInput(f"LLM base url {base_url!r} must start with http:// or https://")
        if not model or not model.strip():
            raise InvalidInput(f"LLM model name is empty; set {ENV_MODEL}")
        self.base_url = base_url.strip().rstrip("/")
        self.model = model.strip()
        self.api_key = api_key or None
        self.timeout = float(timeout)

    def __repr__(self) -> str:  # never print the key
        return f"LLMClient(base_url={self.base_url!r}, model={self.model!r}, api_key={'***' if self.api_key else None})"

    @classmethod
    def from_env(cls) -> LLMClient | None:
        """The client configured by ``PROTODB_LLM_BASE_URL``, ``PROTODB_LLM_MODEL`` and optional
        ``PROTODB_LLM_API_KEY``; None when the base url or the model is unset or empty."""
        base_url = os.environ.get(ENV_BASE_URL, "").strip()
        model = os.environ.get(ENV_MODEL, "").strip()
        if not base_url or not model:
            return None
        return cls(base_url, model, api_key=os.environ.get(ENV_API_KEY) or None)

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/chat/completions"

    def chat(self, messages: list[dict], temperature: float = 0.0, max_tokens: int = 64) -> str:
        """POST the messages and return ``choices[0].message.content`` (a str).

        messages: ``[{"role": "user", "content": "..."}, ...]``.
        Raises LLMError (one line) on HTTP errors, connection errors, timeouts and malformed replies.
        """
        body = json.dumps(
            {"model": self.model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
        ).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = ""
            try:
                detail = err.read().decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 - the status line is enough
                pass
            raise LLMError(_one_line(f"{self.endpoint} answered HTTP {err.code} {err.reason}: {detail}")) from None
        except (TimeoutError, socket.timeout):
            raise LLMError(f"{self.endpoint} did not answer within {self.timeout:g} s") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, (TimeoutError, socket.timeout)):
                raise LLMError(f"{self.endpoint} did not answer within {self.timeout:g} s") from None
            raise LLMError(_one_line(f"cannot reach {self.endpoint}: {err.reason}")) from None
        except OSError as err:
            raise LLMError(_one_line(f"cannot reach {self.endpoint}: {err}")) from None
        try:
            reply = json.loads(raw.decode("utf-8"))
            content = reply["choices"][0]["message"]["content"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
            raise LLMError(
                _one_line(f"{self.endpoint} sent a malformed chat-completions reply ({type(err).__name__}): "
                          f"{raw[:200]!r}")
            ) from None
        if not isinstance(content, str):
            raise LLMError(f"{self.endpoint} sent no text content (message.content is {type(content).__name__})")
        return content


def build_prompt(name: str) -> str:
    """The user message that asks whether ``name`` is a thing or stuff."""
    return PROMPT_TEMPLATE.format(name=name)


_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_KIND_WORD = re.compile(r"\b(things?|stuffs?)\b", re.IGNORECASE)


def parse_answer(answer: str) -> str:
    """"thing" or "stuff" from a free-form answer ("Stuff.", "The answer is: STUFF", "things").

    A ``<think>...</think>`` block (reasoning models) is ignored. Raises LLMError when the answer
    contains neither word or both.
    """
    text = _THINK_BLOCK.sub(" ", answer)
    found = {m.group(1).lower().rstrip("s") for m in _KIND_WORD.finditer(text)}
    if len(found) == 1:
        return found.pop()
    what = "both 'thing' and 'stuff'" if found else "neither 'thing' nor 'stuff'"
    raise LLMAnswerError(_one_line(f"LLM answer has {what}: {answer!r}"))


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("class name is empty; give a name such as 'boat' or 'sky'")
    return " ".join(name.split())


def classify_with_llm(client: LLMClient, name: str) -> Label:
    """Ask the LLM whether ``name`` is a thing or stuff; ``Label(source="llm")`` with model, prompt
    and raw answer. Raises LLMError when the call fails or the answer is unusable."""
    name = _check_name(name)
    prompt = build_prompt(name)
    answer = client.chat([{"role": "user", "content": prompt}], temperature=0.0)
    kind = parse_answer(answer)
    return Label(kind=kind, source="llm", model=client.model, prompt=prompt, raw_answer=answer)


# --- many names per request ----------------------------------------------------------------------

DEFAULT_BATCH_SIZE = 50
MAX_BATCH_SIZE = 500

BATCH_PROMPT_TEMPLATE = (
    "In image segmentation (as in the COCO-Stuff dataset) every class is either a \"thing\" or "
    "\"stuff\". A thing is a countable object with a well-defined shape, whose individual instances "
    "can be told apart and counted (for example: person, car, boat, cup, dog). Stuff is an amorphous "
    "region or material without a fixed shape or a count (for example: sky, grass, road, water, "
    "wall, sand).\n"
    "Here are {count} class names as a JSON list:\n{names}\n"
    "Answer with one JSON object and nothing else: every name of the list, exactly as written, as a "
    "key, and \"thing\" or \"stuff\" as its value."
)

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)


def build_batch_prompt(names: list[str]) -> str:
    """The user message that asks for the thing/stuff label of every name in ``names``."""
    return BATCH_PROMPT_TEMPLATE.format(count=len(names), names=json.dumps(list(names), ensure_ascii=False))


def parse_batch_answer(answer: str, names: list[str]) -> dict[str, str]:
    """name -> "thing"/"stuff" from a batch answer: one JSON object (a ``<think>`` block and a
    ```json fence around it are ignored) whose keys are exactly ``names`` and whose values are
    "thing" or "stuff" (any case). Anything else raises LLMAnswerError: a missing, extra or
    unusable entry rejects the whole answer."""
    text = _FENCE.sub("", _THINK_BLOCK.sub(" ", answer).strip()).strip()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        raise LLMAnswerError(_one_line(f"batch answer is not one JSON object ({err.msg}): {answer!r}", 160)) from None
    if not isinstance(parsed, dict):
        raise LLMAnswerError(f"batch answer is a JSON {type(parsed).__name__}, not an object")
    wanted = set(names)
    missing, extra = wanted - parsed.keys(), parsed.keys() - wanted
    if missing or extra:
        what = [f"{len(missing)} name(s) missing (e.g. {sorted(missing)[0]!r})"] if missing else []
        what += [f"{len(extra)} name(s) not asked about (e.g. {sorted(extra)[0]!r})"] if extra else []
        raise LLMAnswerError("batch answer has " + " and ".join(what))
    kinds = {}
    for name in names:
        value = parsed[name]
        kind = value.strip().lower() if isinstance(value, str) else None
        if kind not in KINDS:
            raise LLMAnswerError(_one_line(f"batch answer for {name!r} is {value!r}, not 'thing' or 'stuff'"))
        kinds[name] = kind
    return kinds


@dataclass
class BatchReport:
    """What :func:`classify_many_with_llm` did: ``labels`` (name -> Label), ``failed`` (name -> why the
    LLM gave no usable label), ``requests`` (HTTP requests sent)."""

    labels: dict[str, Label]
    failed: dict[str, str]
    requests: int = 0


class LLMBatchAborted(LLMError):
    """The endpoint failed twice in a row; ``report`` holds what was labelled before."""

    def __init__(self, message: str, report: BatchReport):
        super().__init__(message)
        self.report = report


def classify_many_with_llm(
    client: LLMClient,
    names: list[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[dict[str, Label], dict[str, str]], None] | None = None,
) -> BatchReport:
    """Thing or stuff for each of ``names`` (duplicates asked once), ``batch_size`` names per request.

    ``on_batch(labels, failed)`` is called after each batch with that batch's results (callers store
    them, so a stopped run keeps what it got). A malformed answer is split and asked again (see the
    module docstring); an endpoint failure is retried once, then LLMBatchAborted is raised.
    """
    if not 1 <= int(batch_size) <= MAX_BATCH_SIZE:
        raise InvalidInput(f"batch size must be 1..{MAX_BATCH_SIZE}, not {batch_size}")
    names = list(dict.fromkeys(_check_name(n) for n in names))
    report = BatchReport({}, {})

    def ask(messages: list[dict], max_tokens: int) -> str:
        for attempt in (1, 2):
            report.requests += 1
            try:
                return client.chat(messages, temperature=0.0, max_tokens=max_tokens)
            except LLMAnswerError:
                raise
            except LLMError as err:
                if attempt == 2:
                    raise LLMBatchAborted(f"the LLM endpoint failed twice: {err}", report) from None
        raise AssertionError("unreachable")

    def one(batch: list[str], labels: dict[str, Label], failed: dict[str, str]) -> None:
        prompt = build_batch_prompt(batch)
        budget = 64 + sum(len(n) // 2 + 12 for n in batch)  # room for the JSON object, not an essay
        try:
            answer = ask([{"role": "user", "content": prompt}], budget)
            kinds = parse_batch_answer(answer, batch)
        except LLMAnswerError as err:
            if len(batch) > 1:
                half = (len(batch) + 1) // 2
                one(batch[:half], labels, failed)
                one(batch[half:], labels, failed)
                return
            name = batch[0]
            try:  # the plain one-name question, once
                single = build_prompt(name)
                answer1 = ask([{"role": "user", "content": single}], 64)
                labels[name] = Label(parse_answer(answer1), "llm", client.model, single, answer1)
            except LLMAnswerError as err1:
                failed[name] = _one_line(f"{err}; then {err1}")
            return
        for name in batch:
            labels[name] = Label(kinds[name], "llm", client.model, prompt,
                                 json.dumps({name: kinds[name]}, ensure_ascii=False))

    for start in range(0, len(names), int(batch_size)):
        labels: dict[str, Label] = {}
        failed: dict[str, str] = {}
        try:
            one(names[start:start + int(batch_size)], labels, failed)
        finally:
            report.labels.update(labels)
            report.failed.update(failed)
            if on_batch is not None and (labels or failed):
                on_batch(labels, failed)
    return report


# --- lexicon -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def stuff_lexicon() -> frozenset[str]:
    """The built-in stuff class names (lowercase), from ``protodb/data/stuff_lexicon.txt``; a
    hyphenated name is also held with spaces ("floor-wood" and "floor wood")."""
    text = resources.files("protodb").joinpath("data", "stuff_lexicon.txt").read_text(encoding="utf-8")
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name = lexicon_key(line)
            names.update({name, name.replace("-", " ")})
    return frozenset(names)


def lexicon_key(name: str) -> str:
    """How a name is looked up in the lexicon: the class-name rule (trimmed, single-spaced, lowercase;
    :func:`protodb.names.normalize_class_name`) applied after ``_`` becomes a space (lexicon files and
    datasets write ``dirt_track``)."""
    return " ".join(str(name).replace("_", " ").lower().split())


def _word_forms(word: str) -> list[str]:
    """The word itself plus likely singular and plural forms (English, rule of thumb)."""
    forms = [word]
    if word.endswith("ies") and len(word) > 4:
        forms.append(word[:-3] + "y")  # bodies -> body
    if word.endswith("ves") and len(word) > 4:
        forms += [word[:-3] + "f", word[:-3] + "fe"]  # leaves -> leaf
    if word.endswith("es") and len(word) > 3:
        forms.append(word[:-2])  # branches -> branch
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        forms.append(word[:-1])  # clouds -> cloud
    # singular given, lexicon holds the plural (cloud -> clouds, leaf -> leaves)
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        forms.append(word[:-1] + "ies")
    if word.endswith("f"):
        forms.append(word[:-1] + "ves")
    if word.endswith("fe"):
        forms.append(word[:-2] + "ves")
    forms += [word + "s", word + "es"]
    return forms


def _name_forms(name: str) -> list[str]:
    """Normalised name, its hyphen/space variants, and singular/plural forms of the last word."""
    base = lexicon_key(name)
    variants = [base]
    if "-" in base:
        variants.append(base.replace("-", " "))
    forms = []
    for variant in variants:
        head, _, last = variant.rpartition(" ")
        for form in _word_forms(last):
            forms.append(f"{head} {form}" if head else form)
    return forms


#: the lexicons a name can be looked up in: protodb's own stuff list, and the OVDiff authors' thing/stuff table
LEXICONS = ("builtin", "ovdiff")
ENV_LEXICON = "PROTODB_LEXICON"
LEXICON_NOTE = "lexicon:"  # raw_answer prefix of a label decided by a lexicon other than the built-in one


def choose_lexicon(lexicon: str | None = None) -> str:
    """``lexicon``, else ``$PROTODB_LEXICON``, else ``builtin``; one clear error for an unknown name."""
    key = (lexicon or os.environ.get(ENV_LEXICON) or "builtin").strip().lower()
    if key not in LEXICONS:
        raise InvalidInput(f"unknown lexicon {lexicon or os.environ.get(ENV_LEXICON)!r}; use one of {', '.join(LEXICONS)}")
    return key


@lru_cache(maxsize=None)
def lexicon_table(lexicon: str) -> dict[str, str]:
    """Lexicon key -> the kind it lists. ``builtin``: every name of :func:`stuff_lexicon` -> ``stuff`` (a
    name it lacks is a thing by default, not by decision); ``ovdiff``: ``protodb/data/lexicon_ovdiff.txt``, the
    authors' 173 decisions (27 stuff, 146 things; 172 names under the class-name rule, which makes
    ``__background__`` ``background``; a name it lacks is a thing there too)."""
    if choose_lexicon(lexicon) == "builtin":
        return dict.fromkeys(stuff_lexicon(), "stuff")
    text = resources.files("protodb").joinpath("data", "lexicon_ovdiff.txt").read_text(encoding="utf-8")
    table = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, kind = line.rsplit("\t", 1)
            table[lexicon_key(name)] = kind.strip()
    return table


def lexicon_kind(name: str, lexicon: str | None = None) -> str | None:
    """The kind ``lexicon`` (see :func:`choose_lexicon`) lists for ``name`` (normalised; singular or plural
    of the last word for the built-in list), or None when it lists none. The built-in list only lists stuff."""
    table = lexicon_table(choose_lexicon(lexicon))
    forms = _name_forms(name) if choose_lexicon(lexicon) == "builtin" else [lexicon_key(name)]
    return next((table[form] for form in forms if form in table), None)


def classify_with_lexicon(name: str, lexicon: str | None = None) -> Label:
    """``Label(source="lexicon")`` with the kind ``lexicon`` lists for the name, else ``thing``. The built-in
    lexicon (default; ``$PROTODB_LEXICON``) lists stuff names, plural/singular tolerant; ``ovdiff`` is the
    authors' table, names exactly as they wrote them, and its labels say so in ``raw_answer``
    (``"lexicon: ovdiff"``)."""
    name = _check_name(name)
    key = choose_lexicon(lexicon)
    kind = lexicon_kind(name, key) or "thing"
    return Label(kind=kind, source="lexicon", raw_answer=None if key == "builtin" else f"{LEXICON_NOTE} {key}")


# --- the one entry point -------------------------------------------------------------------------


def classify(
    name: str,
    *,
    override: str | None = None,
    client: LLMClient | None | Literal["env"] = "env",
    lexicon: str | None = None,
) -> Label:
    """Thing or stuff for ``name``.

    override: "thing"/"stuff" -> ``Label(source="manual")``. client: an LLMClient, None (lexicon
    only), or "env" (``LLMClient.from_env()``; lexicon only when unconfigured). When the LLM fails
    the lexicon decides and ``raw_answer`` records the failure (see the module docstring). lexicon: which
    lexicon decides without an LLM (:func:`choose_lexicon`: ``builtin`` or ``ovdiff``).
    """
    name = _check_name(name)
    if override is not None:
        kind = str(override).strip().lower()
        if kind not in KINDS:
            raise InvalidInput(f"thing/stuff override must be 'thing' or 'stuff', not {override!r}")
        return Label(kind=kind, source="manual")
    if isinstance(client, str):
        if client != "env":
            raise InvalidInput(f"client must be an LLMClient, None or 'env', not {client!r}")
        client = LLMClient.from_env()
    if client is None:
        return classify_with_lexicon(name, lexicon)
    try:
        return classify_with_llm(client, name)
    except LLMError as err:
        fallback = classify_with_lexicon(name, lexicon)
        return Label(
            kind=fallback.kind,
            source="lexicon",
            model=client.model,
            prompt=build_prompt(name),
            raw_answer=f"llm error: {err}; {_FALLBACK_NOTE}",
        )


__all__ = [
    "KINDS",
    "Label",
    "LLMClient",
    "LLMError",
    "LLMAnswerError",
    "LLMBatchAborted",
    "BatchReport",
    "DEFAULT_BATCH_SIZE",
    "build_batch_prompt",
    "parse_batch_answer",
    "classify_many_with_llm",
    "build_prompt",
    "parse_answer",
    "classify",
    "classify_with_llm",
    "classify_with_lexicon",
    "choose_lexicon",
    "LEXICONS",
    "lexicon_kind",
    "lexicon_key",
    "stuff_lexicon",
]
