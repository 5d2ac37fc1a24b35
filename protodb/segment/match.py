"""Nearest-prototype matching: label pixels by the class whose prototypes they resemble most (OVDiff).

A vocabulary of C classes becomes a :class:`MatchTable` with C columns (one per class, in the given order)
plus, when ``background=True``, column C for the background. The score of a patch for a column is the
maximum cosine similarity between the patch feature and any prototype of that column; the label is the
column with the highest score.

Label convention (used by :class:`SegmentResult`, the metrics and the dataset loaders): ``0..C-1`` are the
classes in vocabulary order, ``C`` is the background (only when the table has a background column).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from protodb.errors import InvalidInput

#: Score of a column that has no prototypes (lower than any cosine similarity, so it never wins).
EMPTY_SCORE = -2.0

#: Default number of similarity values (patches x prototypes) computed per matmul when ``chunk`` is None.
_CHUNK_ELEMENTS = 1 << 25


@dataclass
class ClassPrototypes:
    """The prototypes of one vocabulary class for one extractor.

    ``fg``: (P, D) float32, L2-normalised, P >= 1: the class's foreground prototypes (class, instance and/or
    part level, whichever were chosen). ``bg``: (Q, D) float32, L2-normalised, Q >= 0: its background
    prototypes. ``stuff``: whether the class is amorphous ("sky", "grass"): stuff classes give no
    background prototypes, and thing background prototypes that look like a stuff class are dropped.
    ``fg_ids`` / ``bg_ids``: optional row ids (len P / Q), carried into the table for explanations.
    """

    name: str
    stuff: bool
    fg: torch.Tensor
    bg: torch.Tensor
    fg_ids: list[str] | None = None
    bg_ids: list[str] | None = None


@dataclass
class _Blocks:
    """Padded block layout of a table for fast segment-max (internal).

    The owner-sorted rows are cut into blocks of ``length`` rows, each block belonging to one column; a
    column whose row count is not a multiple of ``length`` is padded by repeating its first row (a copy
    never changes a max). ``vectors``: (nblocks * length, D) on the table's device/dtype; ``slot_row``:
    (nblocks * length,) int64 table row of each slot; ``block_owner``: (nblocks,) int64 column of each
    block (non-decreasing), also as a Python list.
    """

    length: int
    vectors: torch.Tensor
    slot_row: torch.Tensor
    block_owner: torch.Tensor
    block_owner_list: list[int]


@dataclass
class MatchTable:
    """Prototypes of a vocabulary for one extractor, ready to match (built once per run, on the device).

    ``vectors``: (N, D) L2-normalised, on the matching device in the matching dtype, rows sorted by owner;
    ``owner``: (N,) int64 column of each row (0..C-1 classes, C background); ``names``: the C class names;
    ``stuff``: (C,) thing/stuff flags; ``background``: whether column C exists; ``ids``: (N,) row ids or
    None (from ``fg_ids`` / ``bg_ids``); ``source``: (N,) ``(class index, "fg" | "bg", row in that class's
    tensor)`` of each row.
    """

    vectors: torch.Tensor
    owner: torch.Tensor
    names: list[str]
    background: bool
    stuff: list[bool] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)
    source: list[tuple[int, str, int]] = field(default_factory=list)
    vote: int = 1  # a column's score: the mean of its `vote` best cosines (1: the max; :func:`score_patches`)
    _blocks: _Blocks | None = field(default=None, repr=False)

    @property
    def num_columns(self) -> int:
        """C' = C classes (+ 1 when there is a background column)."""
        return len(self.names) + int(self.background)

    @property
    def column_names(self) -> list[str]:
        """Names of the C' columns; the background column is called ``"background"``."""
        return list(self.names) + (["background"] if self.background else [])

    @property
    def counts(self) -> list[int]:
        """Number of prototypes in each of the C' columns."""
        return torch.bincount(self.owner.cpu(), minlength=self.num_columns).tolist()


def _as_matrix(x: torch.Tensor, dim: int | None, what: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim == 1 and x.numel() == 0:
        x = x.reshape(0, dim or 0)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim and x.shape[0] > 0):
        raise InvalidInput(f"{what}: expected a (rows, {dim or 'D'}) matrix, got shape {tuple(x.shape)}")
    return x.detach().float().cpu()


def build_match_table(classes: Sequence[ClassPrototypes], *, background: bool = True,
                      stuff_filter_threshold: float | None = 0.85, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> MatchTable:
    """Assemble the prototypes of ``classes`` (one column each, in order) into a :class:`MatchTable`.

    OVDiff rules for the background column (only when ``background=True``): stuff classes contribute no
    background prototypes; a thing class's background prototype is dropped when its cosine similarity with
    ANY foreground prototype of any stuff class in ``classes`` exceeds ``stuff_filter_threshold`` (None
    disables the filter); the background column is the union of what remains. With ``background=False``
    there is no background column (datasets without a background class) and bg prototypes are ignored.
    All vectors are re-normalised; the table lives on ``device`` in ``dtype`` (matching happens there).
    """
    if not classes:
        raise InvalidInput("no classes to match against: give at least one class with prototypes")
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise InvalidInput(f"class names must be unique; repeated: {', '.join(dupes)}")
    dim = None
    fgs, bgs = [], []
    for c in classes:
        fg = _as_matrix(c.fg, dim, f"class {c.name!r} foreground prototypes")
        dim = fg.shape[1]
        if fg.shape[0] == 0:
            raise InvalidInput(f"class {c.name!r} has no foreground prototypes; build them first "
                               f"(protodb add-class {c.name!r})")
        bg = _as_matrix(c.bg if c.bg is not None else torch.zeros(0, dim), dim,
                        f"class {c.name!r} background prototypes")
        fgs.append(F.normalize(fg, dim=1))
        bgs.append(F.normalize(bg, dim=1) if bg.shape[0] else bg.reshape(0, dim))

    vectors, owner, ids, source = [], [], [], []
    for k, (c, fg) in enumerate(zip(classes, fgs)):
        vectors.append(fg)
        owner += [k] * fg.shape[0]
        ids += list(c.fg_ids) if c.fg_ids is not None else [None] * fg.shape[0]
        source += [(k, "fg", i) for i in range(fg.shape[0])]
    if background:
        things = [k for k, (c, bg) in enumerate(zip(classes, bgs)) if not c.stuff and bg.shape[0]]
        stuff_fg = [fg for c, fg in zip(classes, fgs) if c.stuff]
        for k, keep in zip(things, _stuff_filter([bgs[k] for k in things], stuff_fg, stuff_filter_threshold)):
            c, bg = classes[k], bgs[k]
            rows = keep.nonzero().flatten().tolist()
            vectors.append(bg[keep])
            owner += [len(classes)] * len(rows)
            ids += [c.bg_ids[i] if c.bg_ids is not None else None for i in rows]
            source += [(k, "bg", i) for i in rows]
    table = MatchTable(
        vectors=torch.cat(vectors).to(device=device, dtype=dtype),
        owner=torch.tensor(owner, dtype=torch.int64, device=device),
        names=names, background=background, stuff=[bool(c.stuff) for c in classes],
        ids=ids, source=source,
    )
    table._blocks = _make_blocks(table)
    return table


def _stuff_filter(bgs: list[torch.Tensor], stuff_fg: list[torch.Tensor], threshold: float | None,
                  rows: int = 4096) -> list[torch.Tensor]:
    """For each (Q_k, D) thing background matrix, a (Q_k,) bool mask of the rows to keep: those whose
    cosine with every stuff foreground prototype is <= ``threshold`` (all rows when there is no stuff
    class or no threshold)."""
    if threshold is None or not stuff_fg or not bgs:
        return [torch.ones(bg.shape[0], dtype=torch.bool) for bg in bgs]
    stuff = torch.cat(stuff_fg)
    allbg = torch.cat(bgs)
    worst = torch.cat([(allbg[i:i + rows] @ stuff.T).amax(dim=1) for i in range(0, allbg.shape[0], rows)])
    return list((worst <= threshold).split([bg.shape[0] for bg in bgs]))


def _block_length(counts: np.ndarray) -> int:
    """Rows per block minimising padded rows + a small per-block cost (the second-stage reduction)."""
    counts = counts[counts > 0]
    if counts.size == 0:
        return 1
    top = int(min(counts.max(), 1024))
    best, best_cost = top, None
    for length in range(1, top + 1):
        nblocks = np.ceil(counts / length).sum()
        cost = nblocks * length + 4 * nblocks
        if best_cost is None or cost < best_cost:
            best, best_cost = length, cost
    return best


def _make_blocks(table: MatchTable) -> _Blocks:
    counts = np.bincount(table.owner.cpu().numpy(), minlength=table.num_columns)
    length = _block_length(counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot_row, block_owner = [], []
    for col, (start, n) in enumerate(zip(starts, counts)):
        if n == 0:
            continue
        nblocks = -(-int(n) // length)
        rows = np.arange(start, start + n)
        pad = np.full(nblocks * length - n, start)
        slot_row.append(np.concatenate([rows, pad]))
        block_owner += [col] * nblocks
    slot = torch.from_numpy(np.concatenate(slot_row).astype(np.int64)).to(table.vectors.device)
    padded = table.vectors if slot.numel() == table.vectors.shape[0] else table.vectors[slot]
    return _Blocks(length=length, vectors=padded, slot_row=slot,
                   block_owner=torch.tensor(block_owner, dtype=torch.int64, device=table.vectors.device),
                   block_owner_list=block_owner)


@torch.no_grad()
def score_patches(feats: torch.Tensor, table: MatchTable, chunk: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every patch against every column of ``table``.

    ``feats``: (h, w, D) float, L2-normalised. Returns ``scores``: (C', h, w) float32, the max cosine
    similarity over each column's prototypes (``EMPTY_SCORE`` for a column without prototypes), and
    ``best``: (C', h, w) int64, the table row (index into ``table.vectors``) reaching it (-1 if empty).

    Prototypes are processed ``chunk`` rows at a time (default: about 32M similarities per matmul), one
    matmul per chunk followed by a max over fixed-length blocks of same-column rows, so memory stays
    bounded with any number of prototypes. Ties go to the lowest row.

    kNN voting (``table.vote = k > 1``): a column's score is the mean of its k best cosines (all of them
    when it has fewer), ``best`` still the row of the best one: a column wins by several prototypes that
    agree, not by one stray prototype among many (the background's union of every class's background).
    """
    if feats.ndim != 3 or feats.shape[-1] != table.vectors.shape[1]:
        raise InvalidInput(f"features must be (h, w, {table.vectors.shape[1]}); got {tuple(feats.shape)}")
    if int(getattr(table, "vote", 1)) > 1:
        return _score_vote(feats, table, int(table.vote), chunk)
    blocks = table._blocks or _make_blocks(table)
    table._blocks = blocks
    h, w, _ = feats.shape
    hw, cols, length = h * w, table.num_columns, blocks.length
    dev = table.vectors.device
    x = feats.reshape(hw, -1).to(device=dev, dtype=table.vectors.dtype)
    best = torch.full((hw, cols), EMPTY_SCORE, dtype=torch.float32, device=dev)
    arg = torch.full((hw, cols), -1, dtype=torch.int64, device=dev)
    nblocks = len(blocks.block_owner_list)
    if chunk is None:
        chunk = max(_CHUNK_ELEMENTS // max(hw, 1), 8192)
    per = max(1, int(chunk) // length)
    for b0 in range(0, nblocks, per):
        b1 = min(nblocks, b0 + per)
        sims = x @ blocks.vectors[b0 * length:b1 * length].T  # (hw, nb * L)
        vals, pos = sims.view(hw, b1 - b0, length).max(dim=2)  # (hw, nb)
        vals = vals.float()
        slots = pos + torch.arange(b0, b1, device=dev).mul_(length)
        rows = blocks.slot_row[slots]  # (hw, nb)
        c0, c1 = blocks.block_owner_list[b0], blocks.block_owner_list[b1 - 1] + 1
        local = blocks.block_owner[b0:b1] - c0  # (nb,), non-decreasing
        if c1 - c0 == b1 - b0:  # one block per column: the block max is the column max
            cvals, crows = vals, rows
        else:
            idx = local.expand(hw, -1)
            cvals = torch.full((hw, c1 - c0), EMPTY_SCORE, device=dev).scatter_reduce_(1, idx, vals, "amax")
            hit = vals == cvals.gather(1, idx)
            cand = torch.where(hit, rows, torch.iinfo(torch.int64).max)
            crows = torch.full((hw, c1 - c0), torch.iinfo(torch.int64).max, dtype=torch.int64,
                               device=dev).scatter_reduce_(1, idx, cand, "amin")
        cur = best[:, c0:c1]
        better = cvals > cur
        best[:, c0:c1] = torch.where(better, cvals, cur)
        arg[:, c0:c1] = torch.where(better, crows, arg[:, c0:c1])
    return (best.T.reshape(cols, h, w).contiguous(), arg.T.reshape(cols, h, w).contiguous())


@torch.no_grad()
def _score_vote(feats: torch.Tensor, table: MatchTable, k: int, chunk: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`score_patches` with kNN voting: per column the mean of its ``k`` highest cosines (rows are
    owner-sorted, so each column is one contiguous slice), and the row of the highest. Patches go
    ``chunk`` rows at a time (default: about 32M similarities per matmul)."""
    h, w, _ = feats.shape
    hw, cols = h * w, table.num_columns
    dev = table.vectors.device
    x = feats.reshape(hw, -1).to(device=dev, dtype=table.vectors.dtype)
    counts = torch.bincount(table.owner.cpu(), minlength=cols).tolist()
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
    best = torch.full((hw, cols), EMPTY_SCORE, dtype=torch.float32, device=dev)
    arg = torch.full((hw, cols), -1, dtype=torch.int64, device=dev)
    step = max(1, (chunk or _CHUNK_ELEMENTS) // max(1, table.vectors.shape[0]))
    for r0 in range(0, hw, step):
        sims = (x[r0:r0 + step] @ table.vectors.T).float()  # (n, N)
        for c, (s0, n) in enumerate(zip(starts, counts)):
            if n == 0:
                continue
            top, pos = sims[:, s0:s0 + n].topk(min(k, n), dim=1)  # sorted: pos[:, 0] is the best row
            best[r0:r0 + step, c] = top.mean(dim=1)
            arg[r0:r0 + step, c] = pos[:, 0] + s0
    return best.T.reshape(cols, h, w).contiguous(), arg.T.reshape(cols, h, w).contiguous()
