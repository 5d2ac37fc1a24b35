"""How much to trust a segmentation: a signal computed from the result itself, with the rule spelled out.

**How the scores read.** The ``score`` of a pixel (and a class's mean ``score`` in ``present``) is the
cosine similarity, -1 to 1, between the photo's patch feature there and the nearest prototype of the
winning class. It is *not* a probability: its usual level depends on the extractor (self-supervised
ViT features of unrelated things are often far above 0) and on the class, so a high value alone —
say a road labelled "rocket" at 0.93 — does not mean the class is right. Every pixel gets *some*
class of the vocabulary: argmax has no "none of these". What the result can say is whether the
winner was clearly nearer than the alternatives.

**The signal: separation.** At each pixel, with ``s1`` the winning cosine and ``s2`` the runner-up's
(the best score of any other column, the background included), take cosine distances ``d = 1 - s``::

    separation = 1 - d1 / d2        (0 when d2 = 0)

the share of the runner-up's distance that the winner is nearer: 0 is a tie, 0.5 means the winner is
twice as near, 1 a perfect match. Unlike the raw lead ``s1 - s2`` it does not shrink when an
extractor's cosines crowd close to 1. A pixel is a **near tie** when ``separation < NEAR_TIE`` (the
winner is less than 10 % nearer than the runner-up).

**The rule.** A class is **uncertain** when more than ``MOSTLY`` (half) of its pixels are near ties:
on most of its area it only just beat the runner-up (named, with how often). The image gets
warnings, each with a level:

- ``one_column`` (warning): a single column competed (one class, no background): every pixel is that
  class whatever the photo shows, and nothing can be compared;
- ``near_ties`` (warning): more than half of the image's pixels are near ties: the classes barely
  differ on this photo, so the labels are mostly a toss-up — the vocabulary likely does not describe it;
- ``no_match`` (warning): the median winning cosine is at most 0: no prototype points the way the
  photo's features do;
- ``uncertain`` (note): some classes present are uncertain (listed with their share of the image).

``verdict``: ``doubtful`` with any warning, ``mixed`` with notes only, else ``clear``.

``NEAR_TIE`` (10 %) and ``MOSTLY`` (half) are round reading conventions, not values fitted to any data
set; the raw numbers (margins, separations, near-tie shares) are reported alongside so a caller can
apply its own. Class boundaries are near ties by nature (two classes meet there), so a small class
with much boundary may be flagged. Nothing here knows what score a class reaches on photos it does
fit, so the signal can flag an ambiguous result but never certify a right one.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

NEAR_TIE = 0.1
MOSTLY = 0.5
SEP_BINS = 10_000  # medians of separation are read to 1/10000 (a histogram, not a sort)


def separation(best: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per pixel ``1 - (1 - best) / (1 - second)`` in [0, 1] (0 where both are perfect matches)."""
    d1 = np.maximum(1.0 - np.asarray(best, np.float32), 0.0)
    d2 = np.maximum(1.0 - np.asarray(second, np.float32), 0.0)
    positive = d2 > 0
    sep = np.zeros_like(d2)
    np.divide(d1, d2, out=sep, where=positive)
    sep = np.where(positive, 1.0 - sep, 0.0)
    return np.clip(np.nan_to_num(sep, nan=0.0), 0.0, 1.0)


def _r(x: float) -> float:
    return round(float(x), 4)


def _median(hist: np.ndarray) -> float:
    """The median of values binned in ``hist`` (bins of 1/SEP_BINS over [0, 1]): the bin's centre."""
    total = int(hist.sum())
    if not total:
        return 0.0
    k = int(np.searchsorted(np.cumsum(hist), (total + 1) / 2))
    return _r((k + 0.5) / SEP_BINS)


def confidence(labels: np.ndarray, scores: np.ndarray, *, runner_up: np.ndarray | None,
               runner_up_labels: np.ndarray | None, kept: Sequence[str] | None, names: Sequence[str],
               background: bool) -> dict[str, Any]:
    """The confidence block of one segmented image, from its :class:`protodb.segment.result.ImageResult`
    arrays: ``labels`` (H, W) in vocabulary index space, ``scores`` (H, W) the winning cosines,
    ``runner_up`` / ``runner_up_labels`` (H, W) the best other column and its score (None when only one
    column competed), ``kept`` the classes that competed (None: all of ``names``).

    Returns ``rule`` (the thresholds), ``columns`` (how many competed), ``score`` (median winning
    cosine), ``margin`` (mean ``s1 - s2``), ``separation`` (median), ``near_tie`` (share of pixels),
    ``classes`` {name: {fraction, margin, separation, near_tie, runner_up, runner_up_share, uncertain}}
    for every class present, ``warnings`` [{code, level, message}] and ``verdict``: ``"clear"``,
    ``"mixed"`` (notes only) or ``"doubtful"`` (a warning).
    """
    labels = np.asarray(labels)
    best = np.nan_to_num(np.asarray(scores, np.float32))
    C = len(names)
    col_names = list(names) + (["background"] if background else [])
    columns = (len(kept) if kept is not None else C) + int(background)
    median_score = float(np.median(best)) if best.size else 0.0
    out: dict[str, Any] = {"rule": {"near_tie": NEAR_TIE, "mostly": MOSTLY}, "columns": columns,
                           "score": _r(median_score)}
    warnings: list[dict[str, str]] = []
    second = runner_up
    if second is None or columns < 2:
        only = col_names[int(labels.flat[0])] if labels.size else "?"
        out.update(margin=None, separation=None, near_tie=None, classes={})
        warnings.append({"code": "one_column", "level": "warning", "message": (
            f"only one column competed ({only}): every pixel is {only} whatever the photo shows; add classes "
            "or a background to get a comparison")})
    else:
        second = np.nan_to_num(np.asarray(second, np.float32))
        runner = np.asarray(runner_up_labels).ravel().astype(np.int64)
        flat = labels.ravel().astype(np.int64)
        margin = (best - second).ravel()
        sep = separation(best, second).ravel()
        tie = sep < NEAR_TIE
        n = len(col_names)
        # per-class sums and counts in one pass each (no per-class masks: a 2048-pixel photo of many
        # classes stays fast); medians from a fine histogram of separation (bins of 1/SEP_BINS)
        counts = np.bincount(flat, minlength=n)
        margins = np.bincount(flat, weights=margin, minlength=n)
        ties = np.bincount(flat, weights=tie, minlength=n)
        bins = np.minimum((sep * SEP_BINS).astype(np.int64), SEP_BINS - 1)
        hist = np.bincount(flat * SEP_BINS + bins, minlength=n * SEP_BINS).reshape(n, SEP_BINS)
        present = np.flatnonzero(counts)
        if n * n <= 1 << 24:
            pairs = np.bincount(flat * n + runner, minlength=n * n).reshape(n, n)
            runners = {int(c): pairs[c] for c in present}
        else:  # a huge vocabulary: one pass per class present
            runners = {int(c): np.bincount(runner[flat == c], minlength=n) for c in present}
        classes: dict[str, Any] = {}
        for col in present:
            ru = runners[int(col)]
            top = int(ru.argmax())
            share = float(ties[col] / counts[col])
            classes[col_names[col]] = {
                "fraction": _r(counts[col] / flat.size), "margin": _r(margins[col] / counts[col]),
                "separation": _median(hist[col]), "near_tie": _r(share), "runner_up": col_names[top],
                "runner_up_share": _r(ru[top] / counts[col]), "uncertain": bool(share > MOSTLY)}
        image_tie = float(tie.mean())
        out.update(margin=_r(margin.mean()), separation=_median(hist.sum(0)), near_tie=_r(image_tie), classes=classes)
        if image_tie > MOSTLY:
            warnings.append({"code": "near_ties", "level": "warning", "message": (
                f"on {100 * image_tie:.0f}% of the image the winning class is less than {100 * NEAR_TIE:.0f}% "
                "nearer than the runner-up: the classes barely differ on this photo, so the labels are mostly a "
                "toss-up; the vocabulary may not describe what it shows")})
        shaky = sorted((n for n, c in classes.items() if c["uncertain"]), key=lambda n: -classes[n]["fraction"])
        if shaky:
            listed = "; ".join(f"{n} ({_share(classes[n]['fraction'])} of the image, mostly just ahead of "
                               f"{classes[n]['runner_up']})" for n in shaky)
            warnings.append({"code": "uncertain", "level": "note", "message": (
                f"{len(shaky)} of {len(classes)} classes present only just won most of their pixels: {listed}")})
    if best.size and median_score <= 0:
        warnings.append({"code": "no_match", "level": "warning", "message": (
            f"the median winning cosine is {median_score:.3f}: no prototype resembles this photo's features")})
    warnings.sort(key=lambda w: w["level"] != "warning")  # warnings first, then notes
    out["warnings"] = warnings
    out["verdict"] = ("doubtful" if any(w["level"] == "warning" for w in warnings) else
                      "mixed" if warnings else "clear")
    return out


def _share(fraction: float) -> str:
    return f"{100 * fraction:.0f}%" if fraction >= 0.01 else "under 1%"
