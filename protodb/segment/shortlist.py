"""Two-stage matching for large vocabularies.

Stage 1 picks, per image, a shortlist of candidate classes from a compact summary of every class (its class
and instance prototypes: :mod:`protodb.segment.index`); stage 2 scores only the shortlisted classes' full
prototype sets (parts, background) exactly as the exhaustive path does (:func:`protodb.segment.match.
score_patches` over a table of those classes).

Stage 1, for one image: the patch features of the first extractor's windows (all of them, every window
and scale) are reduced to :data:`QUERIES` query vectors by farthest-point sampling (deterministic: the
patch least like the mean first, then each time the patch least like those chosen), so that a small
region unlike the rest gets a query of its own. Each query ranks the classes by the best cosine of any of
their summary vectors — exactly (a matrix product with the summary held in memory: ``exact`` / ``flat``)
or approximately (LanceDB's IVF-PQ index: ``ivf_pq``) — and the shortlist takes the queries' first
choices in turn (every query's best class, then every query's second, ...) until it holds ``size``
classes. Columns the CLIP pre-filter dropped are never shortlisted.

What is given up: a pixel whose exhaustive winner is not shortlisted gets another label. The background
column of a two-stage table is made of the shortlisted thing classes' background prototypes (the stuff
filter applied against the shortlisted stuff classes), not of every class's. Both are measured by
``benchmarks/bench_vocab_scale.py`` (``agreement``: the share of pixels labelled as the exhaustive path
labels them).

Below :data:`TWO_STAGE_MIN_CLASSES` classes the exhaustive path stays the default (it is as fast there,
and exact); ``--exhaustive`` forces it at any size, ``--shortlist N`` asks for two stages at any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from protodb.segment.options import DEFAULT_SHORTLIST, TWO_STAGE_MIN_CLASSES

__all__ = ["DEFAULT_SHORTLIST", "TWO_STAGE_MIN_CLASSES", "AnnSearch", "ExactSearch", "Shortlister", "patch_queries",
           "round_robin"]

#: Query vectors per image (farthest-point samples of its patch features). 96, not 48: at 20,000 classes
#: (``bench_vocab_scale.py``'s vocabulary, patch features of 2 CamVid val frames and a scikit-image photo)
#: the share of patches whose exhaustive winner is shortlisted (shortlist 128) was 0.891 with 48 queries,
#: 0.992 with 96 and 0.993 with 192: with 48 a whole region's winners went unqueried. k-means centres as
#: queries (64: 0.987, 128: 0.991), weighting queries by the patches nearest them, and a summary with 8
#: part centroids per class added did no better. Cost: 96 x (summary rows) dot products per image.
QUERIES = 96


@torch.no_grad()
def patch_queries(patches: torch.Tensor, k: int = QUERIES) -> torch.Tensor:
    """(min(k, N), D) float32: farthest-point samples of ``patches`` (N, D), L2-normalised, in the order
    chosen (deterministic: the first is the patch least similar to the mean patch)."""
    x = torch.nn.functional.normalize(patches.reshape(-1, patches.shape[-1]).float(), dim=1)
    n = x.shape[0]
    k = min(k, n)
    mean = torch.nn.functional.normalize(x.mean(0, keepdim=True), dim=1)[0]
    first = int((x @ mean).argmin())
    chosen = [first]
    closest = x @ x[first]  # (N,) best similarity of each patch to any chosen one
    for _ in range(k - 1):
        nxt = int(closest.argmin())
        chosen.append(nxt)
        closest = torch.maximum(closest, x @ x[nxt])
    return x[chosen]


def round_robin(ranked: list[list[int]], size: int, allowed: set[int] | None = None) -> list[int]:
    """The first ``size`` distinct classes taking each list's next choice in turn (sorted ascending)."""
    out: list[int] = []
    seen: set[int] = set()
    depth = max((len(r) for r in ranked), default=0)
    for d in range(depth):
        for r in ranked:
            if d < len(r):
                c = r[d]
                if c not in seen and (allowed is None or c in allowed):
                    seen.add(c)
                    out.append(c)
                    if len(out) >= size:
                        return sorted(out)
    return sorted(out)


class ExactSearch:
    """Stage 1 over summary vectors held in memory: ``vectors`` (R, D) float32 L2-normalised, ``owner``
    (R,) int64 class of each row in [0, C)."""

    def __init__(self, vectors: np.ndarray | torch.Tensor, owner: np.ndarray | torch.Tensor, num_classes: int,
                 info: dict[str, Any]):
        self.vectors = torch.from_numpy(np.array(vectors, dtype=np.float32))  # a writable copy
        self.owner = torch.as_tensor(np.asarray(owner), dtype=torch.int64)
        self.num_classes = num_classes
        self.info = info

    @torch.no_grad()
    def ranked(self, queries: torch.Tensor, depth: int) -> list[list[int]]:
        """Per query, the ``depth`` classes with the best summary cosine, best first."""
        q = queries.float()
        best = torch.full((q.shape[0], self.num_classes), -4.0)
        step = max(1, (1 << 24) // max(1, q.shape[0]))
        for r0 in range(0, self.vectors.shape[0], step):
            sims = q @ self.vectors[r0:r0 + step].T  # (K, rows)
            idx = self.owner[r0:r0 + step].expand(q.shape[0], -1)
            best.scatter_reduce_(1, idx, sims, "amax")
        return best.topk(min(depth, self.num_classes), dim=1).indices.tolist()


class AnnSearch:
    """Stage 1 through LanceDB's vector index over a summary table (``tables``: a
    :class:`protodb.storage.vectors.SummaryTables`; ``name``: the table; row ``cls`` = class index)."""

    def __init__(self, tables, name: str, num_classes: int, params: dict[str, Any], info: dict[str, Any],
                 rows_per_class: float):
        self.tables, self.name, self.num_classes, self.params, self.info = tables, name, num_classes, params, info
        self.rows_per_class = max(1.0, rows_per_class)

    def ranked(self, queries: torch.Tensor, depth: int) -> list[list[int]]:
        limit = int(min(4096, depth * self.rows_per_class * 2))
        qi, cls, _sim = self.tables.search(self.name, queries.float().numpy(), limit,
                                           nprobes=self.params.get("nprobes", 32),
                                           refine_factor=self.params.get("refine_factor", 10))
        out: list[list[int]] = [[] for _ in range(queries.shape[0])]
        seen: list[set[int]] = [set() for _ in range(queries.shape[0])]
        for q, c in zip(qi.tolist(), cls.tolist()):  # already by query, best first
            if c not in seen[q] and 0 <= c < self.num_classes and len(out[q]) < depth:
                seen[q].add(c)
                out[q].append(c)
        return out


@dataclass
class Shortlister:
    """Stage 1 of a segmenter: ``search`` (exact or ANN) and the shortlist ``size``."""

    search: Any
    size: int
    queries: int = QUERIES

    def shortlist(self, patches: torch.Tensor, allowed: list[int] | None = None) -> list[int]:
        """Vocabulary indices (ascending) to score exactly for an image with patch features ``patches``
        (N, D) of the first extractor."""
        q = patch_queries(patches, self.queries)
        depth = max(1, -(-self.size // max(1, q.shape[0])) * 4)
        ranked = self.search.ranked(q, depth)
        picked = round_robin(ranked, self.size, set(allowed) if allowed is not None else None)
        if len(picked) < min(self.size, len(allowed) if allowed is not None else self.size):
            ranked = self.search.ranked(q, self.size)  # deeper: the first pass ran out of distinct classes
            picked = round_robin(ranked, self.size, set(allowed) if allowed is not None else None)
        return picked

    def describe(self) -> dict[str, Any]:
        return {"mode": "two-stage", "shortlist": self.size, "queries": self.queries, **self.search.info}
