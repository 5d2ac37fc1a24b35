"""The inputs of a segment run and the names of their outputs, for every runner.

Inputs are local files, folders and glob patterns (:func:`protodb.images.expand_inputs`) or, for runners
whose workers reach object storage, URLs (``s3://bucket/imgs/**/*.jpg``, listed through fsspec). Each input's
outputs are named by :func:`protodb.segment.outputs.output_stems` (its path relative to the inputs' common
folder), so two inputs never share one and every runner writes the same files.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Sequence

import fsspec

from protodb.entities import InputFailure, SegmentPlan
from protodb.errors import InvalidInput, ProtoDBError
from protodb.fileio import is_remote_uri
from protodb.images import IMAGE_EXTENSIONS, expand_inputs
from protodb.names import parse_class_list
from protodb.planning import segment_plan
from protodb.segment.options import SegmentOptions
from protodb.segment.outputs import output_stems

if TYPE_CHECKING:
    from protodb.services.container import Services

#: What each input leaves under --out; an input is done when all of them exist (the JSON is written last).
DONE_SUFFIXES = (".labels.png", ".overlay.png", ".json")


def _remote_inputs(url: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(url)
    scheme = url.split("://", 1)[0]
    if any(ch in path for ch in "*?["):
        found = sorted(fs.glob(path))
        what = "pattern matches no image files"
    elif fs.isdir(path):
        found = sorted(fs.ls(path, detail=False))
        what = "prefix holds no images"
    elif fs.isfile(path):
        return [url]
    else:
        raise InvalidInput(f"{url}: no such object or prefix")
    found = [p for p in found if PurePosixPath(p).suffix.lower() in IMAGE_EXTENSIONS]
    if not found:
        raise InvalidInput(f"{url}: {what} ({', '.join(IMAGE_EXTENSIONS)})")
    return [f"{scheme}://{p}" for p in found]


def list_inputs(args: Sequence[str], *, remote: bool = True) -> tuple[list[str], list[InputFailure]]:
    """Every input (local paths, or URLs when ``remote``) in argument order without duplicates; a bad
    argument is one failure and the others still count."""
    out: list[str] = []
    failed: list[InputFailure] = []
    for arg in args:
        try:
            if is_remote_uri(arg) and remote:
                found = _remote_inputs(arg)
            else:
                found = [str(p) for p in expand_inputs([str(arg)])]
        except ProtoDBError as err:
            failed.append(InputFailure(str(arg), str(err)))
            continue
        out += [p for p in found if p not in out]
    return out, failed


def stems_of(inputs: Sequence[str]) -> dict[str, str]:
    """Output names as :func:`output_stems` gives them (URLs count by bucket and key)."""
    keys = {p: (PurePosixPath(p.split("://", 1)[1]) if is_remote_uri(p) else Path(p)) for p in inputs}
    stems = output_stems(list(keys.values()))
    return {p: stems[k] for p, k in keys.items()}


def existing_outputs(out: str) -> set[str]:
    """Files under ``out`` (relative, with '/'), found in one listing."""
    if is_remote_uri(out):
        fs, root = fsspec.core.url_to_fs(out)
        root = root.rstrip("/")
        try:
            return {p[len(root) + 1:] for p in fs.find(root)}
        except FileNotFoundError:
            return set()
    root = Path(out)
    if not root.is_dir():
        return set()
    found = set()
    for folder, _dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        found.update(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in files)
    return found


def split_done(inputs: Sequence[str], stems: dict[str, str], out: str, overwrite: bool) -> tuple[list[str], list[str]]:
    """(inputs to segment, inputs whose outputs all exist)."""
    if overwrite:
        return list(inputs), []
    have = existing_outputs(out)
    todo, done = [], []
    for p in inputs:
        (done if all(stems[p] + s in have for s in DONE_SUFFIXES) else todo).append(p)
    return todo, done


def plan_segment(services: "Services", inputs: Sequence[str], options: SegmentOptions, out: str, *,
                 overwrite: bool, batch_size: int, ray: str | None) -> SegmentPlan:
    """``--dry-run``: inputs to label and those already done (nothing started, nothing written), with the
    estimate of the first extractor the vocabulary uses."""
    paths, failed = list_inputs(inputs)
    stems = stems_of(paths)
    todo, done = split_done(paths, stems, str(out), overwrite)
    extractor = options.extractors[0] if options.extractors else None
    if extractor is None and (options.vocab or options.classes):
        try:
            first = parse_class_list(options.classes)[0] if options.classes else \
                services.vocabs.show(options.vocab).classes[0]
            sets = services.sets.resolve(first.strip())
            extractor = sets[0].extractor if sets else None
        except ProtoDBError:
            extractor = None
    return segment_plan(todo, done, failed, batch_size=batch_size, extractor=extractor, ray=ray,
                        home=services.stores.home)
