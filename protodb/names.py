"""Names that enter protodb: class names, tag/vocabulary names, references, and file names.

One rule per kind of name, applied wherever a name enters (CLI, API, bundles, labels):

* a **class name** is trimmed, single-spaced and lowercased; it may not be empty or longer than
  ``MAX_NAME_LEN``, nor contain ``@`` (references), ``,`` (``--classes a,b`` lists), ``/`` or ``\\``
  (paths), ``..``, or control characters;
* a **tag** (also vocabulary names) is letters, digits and ``_.:-``, not only digits;
* a **reference** is ``name``, ``name@3`` (version) or ``name@tag``;
* a name becomes part of a **file name** only through :func:`file_stem`;
* a **dataset's class name** (``bow_(weapon)``, ``Cabinet/shelf``) becomes a class name through
  :func:`dataset_display_name`: ``_`` is a space, ``/`` between alternatives is `` or ``, then the
  class-name rule (so ``bow (weapon)``, ``cabinet or shelf``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protodb.errors import InvalidInput

MAX_NAME_LEN = 200
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}$")
_FORBIDDEN = {"@": "'@' (it starts a version or tag)", ",": "',' (it separates --classes)",
              "/": "'/'", "\\": "'\\'"}


def normalize_class_name(name: str) -> str:
    """Trimmed, single-spaced, lowercase. Raises InvalidInput (one line) for names that are empty,
    overlong, or hold ``@ , / \\``, ``..`` or control characters."""
    text = str(name)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise InvalidInput(f"class name {text!r} may not contain control characters")
    cleaned = " ".join(text.split()).lower()
    if not cleaned:
        raise InvalidInput("class name is empty; give a name like: protodb add-class boat")
    if len(cleaned) > MAX_NAME_LEN:
        raise InvalidInput(f"class name is {len(cleaned)} characters; the limit is {MAX_NAME_LEN}")
    for ch, what in _FORBIDDEN.items():
        if ch in cleaned:
            raise InvalidInput(f"class name {text!r} may not contain {what}")
    if ".." in cleaned:
        raise InvalidInput(f"class name {text!r} may not contain '..'")
    return cleaned


def dataset_display_name(raw: str) -> str:
    """A class name as a dataset writes it, as a protodb class name: ``_`` becomes a space (LVIS
    ``bow_(weapon)`` -> ``bow (weapon)``), ``/`` between alternatives becomes `` or `` (Objects365
    ``Cabinet/shelf`` -> ``cabinet or shelf``), then :func:`normalize_class_name` (trimmed,
    single-spaced, lowercase; InvalidInput for what it refuses)."""
    text = str(raw).replace("_", " ")
    text = re.sub(r"\s*/\s*", " or ", text)
    return normalize_class_name(text)


def check_tag_name(tag: str) -> str:
    """A valid tag or vocabulary name, unchanged; InvalidInput otherwise."""
    if not isinstance(tag, str) or not _TAG_RE.match(tag) or tag.isdigit():
        raise InvalidInput(
            f"tag {tag!r} is not valid: use letters, digits and _.:- (not only digits), e.g. voc:paper"
        )
    return tag


def quoted(name: str) -> str:
    """``name`` as typed on a command line (quoted when it holds a space)."""
    return f'"{name}"' if " " in name else name


def file_stem(name: str) -> str:
    """A class name (or ref) as a safe file-name part: spaces become ``_``; anything outside
    ``[A-Za-z0-9_.@+-]`` becomes ``_``; never empty, never ``.`` or ``..``."""
    stem = re.sub(r"[^A-Za-z0-9_.@+\-]", "_", str(name).replace(" ", "_"))
    stem = stem.strip(".") or "_"
    return stem[:MAX_NAME_LEN]


@dataclass(frozen=True)
class Ref:
    """A parsed reference: ``name``, ``name@3`` or ``name@tag``."""

    name: str
    version: int | None = None
    tag: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Ref":
        base, sep, pin = str(text).partition("@")
        if sep and not base.strip():
            raise InvalidInput(f"reference {str(text)[:60]!r} has no class name before '@'; "
                               "write it like boat, boat@3 or boat@voc:paper")
        name = normalize_class_name(base)
        if not sep:
            return cls(name)
        pin = pin.strip()
        if pin.isdigit() and int(pin) > 0:
            return cls(name, version=int(pin))
        return cls(name, tag=check_tag_name(pin))

    @property
    def pinned(self) -> bool:
        return self.version is not None or self.tag is not None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}@{self.tag}" if self.tag else self.name


def parse_class_list(text: str | None) -> list[str]:
    """``"cat, dog,boat@3"`` -> ``["cat", "dog", "boat@3"]`` (empty items dropped)."""
    return [c.strip() for c in (text or "").split(",") if c.strip()]
