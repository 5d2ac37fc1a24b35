"""Segmenting against vocabularies of thousands of classes: exhaustive vs two-stage (shortlist) matching.

For each vocabulary size N, a database is written through the real stores (SQLite catalog, LanceDB,
``SetService.commit_many``: no extractor run per class): 32 *real* classes made from the extractor's
features of support photos (CamVid train frames or the given folder, and scikit-image photos) — the patch
features clustered into 32 groups, each group a class (its mean, 8 instance means, 16 parts) — plus N - 32
distractor classes: half around real patch features (a real patch plus noise, so they compete with the real
classes on real photos), half around random directions; each with 1 class, 8 instance and 16 part
prototypes and as many background ones (so 50 rows a class, not OVDiff's 194: the tables of 20,000
classes stay a few GB). The summary index is built (``protodb index build``, kind ``--index-kind``).

Then, each in a fresh process (so start-up and memory are its own), the vocabulary is opened exhaustively
and in two stages and the photos (CamVid val frames and a scikit-image photo) are segmented, without a
background class. Per size and path it reports: ``load_s`` (opening the segmenter in a fresh process, after
imports and the extractor load), ``warm_load_s`` (opening it again in that process), ``rss_gb`` (resident
memory after segmenting), ``segment_s`` per photo, ``extractor_s`` (the bare extractor on the same crops),
``ratio`` = segment_s / extractor_s, and for two-stage ``agreement`` (share of pixels labelled as the
exhaustive path labels them) and the index build time.

    OMP_NUM_THREADS=2 python benchmarks/bench_vocab_scale.py --classes 1000 5000 20000 --json
    python benchmarks/bench_vocab_scale.py --smoke --json   # 40 and 80 classes, tiny-vit, short side 112

Goals (issue 21): ratio <= 2.0 at 20,000 classes, agreement >= 99.5 %, rss <= 4 GB on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from protodb.segment.options import DEFAULT_SHORTLIST
from protodb.segment.shortlist import QUERIES

REAL_CLASSES = 32
INSTANCES, PARTS = 8, 16
ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"


def _rss_gb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in GB (/proc/self/status)."""
    cur = peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 2 ** 20
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 2 ** 20
    return round(cur, 3), round(peak, 3)


def _photos(camvid: Path | None, split: str, n: int, extra: list[str]):
    import PIL.Image

    from protodb.demo import skimage_photo

    out = []
    if camvid is not None and (camvid / split).is_dir():
        out += [PIL.Image.open(p).convert("RGB") for p in sorted((camvid / split).glob("*.png"))[:n]]
    for name in extra:
        try:
            out.append(PIL.Image.open(skimage_photo(name)).convert("RGB").resize((480, 360)))
        except Exception as err:  # noqa: BLE001 - scikit-image absent: CamVid alone
            print(f"no scikit-image photo {name}: {err}", file=sys.stderr)
    if not out:
        raise SystemExit("no photos: give --camvid or install scikit-image")
    return out


def _open_extractor(db, name: str):
    import torch

    reg = db.registry("tiny" if name == "tiny-vit" else None)
    spec = reg.extractor_spec(name)
    ext = reg.load_extractor(spec, "cpu", torch.float32)
    return ext, reg.extractor_record(spec, ext)


def _features(ext, photos, spec):
    """(N, D) float32 patch features of every photo's windows (as segment computes them), and the photo of each."""
    import torch

    from protodb.images import to_tensor
    from protodb.segment.windows import window_features

    feats, owner = [], []
    with torch.no_grad():
        for k, im in enumerate(photos):
            f = torch.cat([x.reshape(-1, x.shape[-1]) for x in window_features(to_tensor(im), ext, spec).feats])
            feats.append(torch.nn.functional.normalize(f.float(), dim=1).numpy())
            owner += [k] * len(f)
    return np.concatenate(feats), np.array(owner)


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _rows(fg, bg):
    from protodb.storage.vectors import PrototypeRows

    kinds = ["class"] + ["instance"] * INSTANCES + ["part"] * PARTS
    kinds = kinds + ["bg_" + k for k in kinds]
    return PrototypeRows(vectors=np.concatenate([fg, bg]), kinds=kinds,
                         regions=[None if k.endswith("class") else (0, 0, 1, 1) for k in kinds])


def build(home: Path, n: int, args) -> dict:
    """Write the synthetic vocabulary of ``n`` classes into a new database at ``home``; build its index."""
    import protodb

    t0 = time.perf_counter()
    db = protodb.open(home)
    ext, record = _open_extractor(db, args.extractor)
    support = _photos(args.camvid, "train", args.support, ["coffee.png", "chelsea.png"])
    feats, img = _features(ext, support, args.spec)
    rng = np.random.default_rng(0)
    # 32 real classes: spherical k-means of the support patches
    cent = feats[rng.choice(len(feats), REAL_CLASSES, replace=False)]
    for _ in range(10):
        assign = (feats @ cent.T).argmax(1)
        cent = _unit(np.stack([feats[assign == c].mean(0) if (assign == c).any() else cent[c]
                               for c in range(REAL_CLASSES)]))
    D = feats.shape[1]
    items = []
    for c in range(min(REAL_CLASSES, n)):
        members = feats[assign == c] if (assign == c).any() else cent[c:c + 1]
        owners = img[assign == c] if (assign == c).any() else np.zeros(1, int)
        inst = [members[owners == k].mean(0) for k in np.unique(owners)][:INSTANCES]
        inst += [members[rng.integers(len(members))] for _ in range(INSTANCES - len(inst))]
        parts = members[rng.choice(len(members), PARTS, replace=len(members) < PARTS)]
        fg = _unit(np.concatenate([cent[c:c + 1], np.stack(inst), parts]))
        items.append((f"real {c}", _rows(fg, _unit(rng.normal(size=(len(fg), D))))))
    made = len(items)
    k = 1 + INSTANCES + PARTS
    written = 0
    while made < n or items:
        while made < n and len(items) < 5000:
            if made % 2:  # around a real patch
                centre = feats[rng.integers(len(feats))][None] + 0.35 * _unit(rng.normal(size=(1, D)))
            else:
                centre = _unit(rng.normal(size=(1, D)))
            fg = _unit(_unit(centre) + 0.25 * _unit(rng.normal(size=(k, D))))
            items.append((f"distractor {made}", _rows(fg, _unit(rng.normal(size=(k, D))))))
            made += 1
        db.sets.commit_many(record, items, config_hash=f"bench-vocab-scale-{written}", params={"synthetic": True})
        written += len(items)
        items = []
    db.vocabs.create("scale", [f"real {c}" for c in range(min(REAL_CLASSES, n))]
                     + [f"distractor {i}" for i in range(min(REAL_CLASSES, n), n)], replace=True)
    write_s = time.perf_counter() - t0
    t0 = time.process_time()
    (status,) = db.indexes.build("scale", kind=args.index_kind)
    index_cpu = time.process_time() - t0
    db.close()
    return {"write_s": round(write_s, 2), "index_build_cpu_s": round(index_cpu, 2), "index_kind": status.kind,
            "index_rows": status.rows, "index_params": status.params}


def child(args) -> None:
    """One (size, path) run in this fresh process: open twice, segment the photos, print JSON."""
    import torch

    import protodb
    from protodb.features.windows import plan_windows, resized_size
    from protodb.images import to_tensor
    from protodb.segment.options import SegmentOptions

    db = protodb.open(args.home, create=False)
    photos = _photos(args.camvid, "val", args.photos, ["astronaut.png"])
    kw = {"exhaustive": True} if args.child == "exhaustive" else {"shortlist": args.shortlist}
    opts = SegmentOptions(vocab="scale", background=False, windows=args.spec, device="cpu", dtype="float32", **kw)
    t0 = time.perf_counter()
    seg = db.segmenter(opts)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    seg = db.segmenter(opts)
    warm_s = time.perf_counter() - t0
    ext = seg.extractors[args.extractor]

    def bare(image) -> float:
        """The extractor on exactly the windows segment feeds it (the extractor's windows; a tiled one's
        through window_features, each shared tile once, as segment runs it)."""
        p, spec = ext.patch_size, args.spec.resolved(getattr(ext, "tile", None))
        H, W = image.shape[1:]
        H2, W2 = resized_size(H, W, spec, p)
        t = time.perf_counter()
        img = torch.nn.functional.interpolate(image[None], size=(H2, W2), mode="bilinear", align_corners=False,
                                              antialias=True).clamp_(0, 1)
        groups: dict = {}
        plan = plan_windows(H, W, spec, p)
        for w in plan:
            groups.setdefault((w.height, w.width), []).append(w)
        with torch.no_grad():
            if hasattr(ext, "window_features") and spec.subpatch == 1:
                ext.window_features(img[0], plan)
                groups = {}
            for (h, w), wins in groups.items():
                for b in range(0, len(wins), spec.batch):
                    ext(torch.cat([img[:, :, x.top:x.top + h, x.left:x.left + w] for x in wins[b:b + spec.batch]]))
        return time.perf_counter() - t

    seg.segment(photos[0])  # warm-up (first-touch of the caches)
    seg_s, ext_s, labels = [], [], []
    for im in photos:
        t = time.perf_counter()
        res = seg.segment(im)
        seg_s.append(time.perf_counter() - t)
        ext_s.append(bare(to_tensor(im)))
        labels.append(res.labels)
    np.savez(args.labels_out, *labels)
    cur, peak = _rss_gb()
    print(json.dumps({"load_s": round(load_s, 3), "warm_load_s": round(warm_s, 3), "rss_gb": cur, "peak_rss_gb": peak,
                      "segment_s": round(float(np.mean(seg_s)), 3), "extractor_s": round(float(np.mean(ext_s)), 3),
                      "ratio": round(float(np.sum(seg_s) / np.sum(ext_s)), 3), "photos": len(photos),
                      "matching": res.settings["matching"]}))


def _child_args(args, home: Path, path: str, labels: Path, shortlist: int) -> list[str]:
    out = [sys.executable, __file__, "--child", path, "--home", str(home), "--labels-out", str(labels),
           "--extractor", args.extractor, "--photos", str(args.photos), "--shortlist", str(shortlist),
           "--short-side", str(args.short_side)]
    if args.camvid is not None:
        out += ["--camvid", str(args.camvid)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, nargs="*", default=[1000, 5000, 20000])
    ap.add_argument("--extractor", default="focus-vits14", help="a built-in extractor, or tiny-vit")
    ap.add_argument("--camvid", type=Path, default=CAMVID if CAMVID.is_dir() else None,
                    help="CamVid-layout folder: train/ frames give the real classes, val/ frames are segmented")
    ap.add_argument("--photos", type=int, default=2, help="CamVid val frames to segment (plus one scikit-image photo)")
    ap.add_argument("--support", type=int, default=4, help="CamVid train frames the real classes come from")
    ap.add_argument("--shortlist", type=int, nargs="+", default=[DEFAULT_SHORTLIST],
                    help="shortlist sizes to run two stages with (the exhaustive run is shared; the first size's "
                    "figures are the row's ratio, agreement, load_s and rss_gb, every size's under by_shortlist)")
    ap.add_argument("--index-kind", default="auto", choices=["auto", "flat", "ivf_pq"])
    ap.add_argument("--short-side", type=int, default=448)
    ap.add_argument("--home", type=Path, help="where the databases go (default: a temporary folder, removed)")
    ap.add_argument("--smoke", action="store_true", help="40 and 80 classes, tiny-vit, short side 112, 1 photo")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", choices=["exhaustive", "two-stage"], help=argparse.SUPPRESS)
    ap.add_argument("--labels-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.classes, args.extractor, args.short_side, args.photos, args.support, args.shortlist = \
            [40, 80], "tiny-vit", 112, 1, 2, [16]

    from protodb.features.windows import WindowSpec

    s = args.short_side  # the paper's windows at 448 (448 and 336, stride 224, and the whole image)
    args.spec = WindowSpec() if s == 448 else WindowSpec(short_side=s, sizes=(s,), stride=s // 2)
    if args.child:
        args.shortlist = args.shortlist[0]
        child(args)
        return
    import torch

    tmp = tempfile.TemporaryDirectory(prefix="protodb-vocab-scale-")
    base = args.home or Path(tmp.name)
    env = {**os.environ}
    rows = []
    for n in args.classes:
        home = base / f"db-{n}"
        built = build(home, n, args)
        row = {"classes": n, **built}
        runs = [("exhaustive", args.shortlist[0])] + [("two-stage", size) for size in args.shortlist]
        for path, size in runs:
            labels = base / f"labels-{n}-{path}-{size}.npz"
            out = subprocess.run(_child_args(args, home, path, labels, size), env=env, capture_output=True,
                                 text=True, check=False)
            if out.returncode != 0:
                raise SystemExit(f"{path} run at {n} classes failed:\n{out.stderr[-3000:]}")
            got = json.loads(out.stdout.strip().splitlines()[-1])
            if path == "exhaustive":
                row["exhaustive"] = got
                a = np.load(labels)
                continue
            b = np.load(labels)
            same = sum(int((a[k] == b[k]).sum()) for k in a.files)
            total = sum(a[k].size for k in a.files)
            got["agreement"] = round(same / total, 5)
            row.setdefault("by_shortlist", {})[str(size)] = {k: got[k] for k in ("agreement", "ratio", "segment_s",
                                                                                 "load_s", "rss_gb")}
            if size == args.shortlist[0]:
                row["two-stage"] = got
        first = row["two-stage"]
        row["agreement"] = first["agreement"]
        row["ratio"] = first["ratio"]
        row["load_s"] = first["load_s"]
        row["rss_gb"] = first["rss_gb"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)  # each size as it finishes (long runs)
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    out = {"extractor": args.extractor, "device": "cpu", "dtype": "float32", "cpu": cpu,
           "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "short_side": args.short_side, "shortlist": args.shortlist[0], "shortlists": args.shortlist,
           "queries": QUERIES, "rows_per_class": 2 * (1 + INSTANCES + PARTS),
           "real_classes": REAL_CLASSES, "results": rows, "smoke": args.smoke,
           "peak_rss_gb_parent": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3)}
    tmp.cleanup()
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for r in rows:
        e, t = r["exhaustive"], r["two-stage"]
        print(f"{r['classes']:>6} classes: exhaustive {e['segment_s']:.2f} s/photo (x{e['ratio']:.2f}, load "
              f"{e['load_s']:.1f} s, {e['rss_gb']:.2f} GB) | two-stage {t['segment_s']:.2f} s/photo "
              f"(x{t['ratio']:.2f}, load {t['load_s']:.1f} s, {t['rss_gb']:.2f} GB) | agreement "
              f"{100 * r['agreement']:.2f} % (shortlist {args.shortlist[0]}) | index {r['index_kind']} "
              f"{r['index_build_cpu_s']:.1f} s CPU")
        for size, b in r["by_shortlist"].items():
            print(f"        shortlist {size}: agreement {100 * b['agreement']:.2f} %, x{b['ratio']:.2f}, "
                  f"{b['segment_s']:.2f} s/photo")
    print(f"[{out['cpu']}, {out['torch_threads']} threads, float32, {args.extractor}, short side {args.short_side}]")


if __name__ == "__main__":
    main()
