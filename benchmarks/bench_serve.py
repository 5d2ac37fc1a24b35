"""Load on ``protodb serve``: concurrent POST /api/segment on loopback against a real uvicorn process.

Builds a small database (two exemplar classes from synthetic scenes with the tiny preset's extractor,
or with ``--extractor focus-vits14`` three classes from scikit-image photos with the real ONNX DINOv2
ViT-S/14), or uses ``--db PATH --vocab NAME``; starts ``protodb serve`` on a free port of 127.0.0.1 and
measures, on the same image (``--image``, default: a synthetic scene, or skimage's coffee for focus):

* in-process: ``db.segmenter(opts).segment(image)`` (the same options the server uses), p50, and one
  client, sequential (in rounds alternating with in-process phases): latency p50 and the ratio of
  the two (the service overhead: upload, decode, queue hop, label PNG and JSON, loopback; goal
  <= 1.15x); and, drift-free, each request's latency over the server's own ``segment()`` time for it;
* ``--clients`` concurrent clients, ``--requests`` in all: requests/s, latency p50/p95/p99, errors,
  server RSS before and after.

    python benchmarks/bench_serve.py [--clients 8] [--requests 200] [--workers 1] [--extractor tiny-vit] [--json]
    python benchmarks/bench_serve.py --smoke   # 2 clients, 6 requests, 2 sequential, 1 warm-up, 1 round: checks it runs

Prints figures; not a test. The machine's other load shows up in the numbers: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_db(root: Path, extractor: str) -> tuple[Path, str, Path]:
    """(home, vocabulary, request image) of a fresh benchmark database."""
    import PIL.Image

    import protodb
    from protodb.pipeline.config import AddClassRequest
    from tests.serve_helpers import build_scene_db, scene

    if extractor == "tiny-vit":
        home = build_scene_db(root)
        image = root / "request.png"
        PIL.Image.fromarray(scene(10)[0]).save(image)
        return home, "scene", image
    from protodb.demo import EXEMPLARS, QUICK, skimage_photo

    home = root / "db"
    with protodb.open(home) as db:
        for name in QUICK:
            folder = root / "ex" / name.replace(" ", "_")
            folder.mkdir(parents=True)
            PIL.Image.open(skimage_photo(EXEMPLARS[name])).convert("RGB").save(folder / "photo.png")
            db.add_class(AddClassRequest(name=name, images=0, exemplars=folder, extractors=(extractor,), k=8))
        db.vocabs.create("bench", list(QUICK))
    image = root / "request.png"
    PIL.Image.open(skimage_photo("coffee.png")).convert("RGB").save(image)
    return home, "bench", image


def in_process(home: Path, vocab: str):
    """(segment(bytes), close, load seconds): the segmenter the server's warm pool builds, in this
    process, called on one worker thread as the server calls it."""
    import protodb
    from protodb.images import load_image
    from protodb.segment.options import SegmentOptions

    db = protodb.open(home, create=False)
    t = time.perf_counter()
    seg = db.segmenter(SegmentOptions(vocab=vocab, explain=True))
    load = time.perf_counter() - t
    pool = ThreadPoolExecutor(1)

    def segment(data: bytes):
        return pool.submit(lambda: seg.segment(load_image(data))).result()  # decoding is part of both sides

    def close() -> None:
        pool.shutdown()
        db.close()

    return segment, close, load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--sequential", type=int, default=30, help="requests of the one-client run")
    ap.add_argument("--warmup", type=int, default=8, help="untimed calls on each side first")
    ap.add_argument("--rounds", type=int, default=5, help="alternating in-process / server phases")
    ap.add_argument("--workers", type=int, default=None, help="server worker threads (default: its own)")
    ap.add_argument("--extractor", default="tiny-vit", choices=["tiny-vit", "focus-vits14"])
    ap.add_argument("--db", type=Path, help="an existing database (with --vocab)")
    ap.add_argument("--vocab")
    ap.add_argument("--image", type=Path)
    ap.add_argument("--smoke", action="store_true",
                    help="2 clients, 6 requests, 2 sequential, 1 warm-up, 1 round: checks the script runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.clients, args.requests, args.sequential, args.warmup, args.rounds = 2, 6, 2, 1, 1

    import httpx

    from tests.serve_helpers import ServerProcess, clear_env

    clear_env()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        if args.db:
            if not args.vocab or not args.image:
                ap.error("--db needs --vocab and --image")
            home, vocab, image = args.db, args.vocab, args.image
        else:
            t = time.perf_counter()
            home, vocab, image = build_db(tmp, args.extractor)
            print(f"built the database in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        if args.image:
            image = args.image
        data = image.read_bytes()
        local_segment, close_local, load_s = in_process(home, vocab)
        for _ in range(args.warmup):  # first calls are slower (kernel selection per shape, caches)
            local_segment(data)

        extra = ["--workers", str(args.workers)] if args.workers else []
        server = ServerProcess(home, "--vocab", vocab, "--queue", str(max(16, 2 * args.clients)), *extra,
                               log=tmp / "serve.log")
        try:
            url = server.url + f"/api/segment?vocab={vocab}"
            with httpx.Client(timeout=120) as h:
                for _ in range(args.warmup):
                    assert h.post(url, content=data).status_code == 200
                seq, local, inside = [], [], []
                # rounds of (in-process phase, server phase): the machine's drift hits both alike; phases,
                # not alternate calls, because each process's thread pool spins a while after its work
                # and would slow the other's next call; a pause lets it settle
                per = max(1, args.sequential // args.rounds)
                for _ in range(args.rounds):
                    time.sleep(0.5)
                    for _ in range(per):
                        t = time.perf_counter()
                        local_segment(data)
                        local.append(time.perf_counter() - t)
                    time.sleep(0.5)
                    for _ in range(per):
                        t = time.perf_counter()
                        r = h.post(url, content=data)
                        seq.append(time.perf_counter() - t)
                        assert r.status_code == 200, r.text
                        inside.append(r.json()["seconds"])  # the server's own segment() call on this image
                workers = h.get(server.url + "/api/health").json()["queue"]["workers"]
            close_local()
            rss_before = rss_mb(server.proc.pid)
            latencies: list[float] = []
            errors: dict[str, int] = {}
            lock = threading.Lock()
            clients = [httpx.Client(timeout=120) for _ in range(args.clients)]
            counter = iter(range(args.requests))

            def client_loop(i: int) -> None:
                h = clients[i]
                while True:
                    with lock:
                        if next(counter, None) is None:
                            return
                    t = time.perf_counter()
                    try:
                        r = h.post(url, content=data)
                        code = str(r.status_code)
                    except httpx.HTTPError as err:
                        code = type(err).__name__
                    took = time.perf_counter() - t
                    with lock:
                        if code == "200":
                            latencies.append(took)
                        else:
                            errors[code] = errors.get(code, 0) + 1

            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(client_loop, range(args.clients)))
            wall = time.perf_counter() - t0
            for c in clients:
                c.close()
            rss_after = rss_mb(server.proc.pid)
        finally:
            rc = server.stop()

        local_p50, seq_p50 = statistics.median(local), statistics.median(seq)
        out = {
            "extractor": args.extractor if not args.db else "(given database)", "vocabulary": vocab,
            "image": str(image.name), "server_workers": workers, "cpus": os.cpu_count(),
            "in_process": {"p50_ms": round(1000 * local_p50, 1), "load_s": round(load_s, 2)},
            "sequential_client": {"requests": len(seq), "p50_ms": round(1000 * seq_p50, 1),
                                  "p95_ms": round(1000 * pct(seq, 95), 1),
                                  "overhead_p50": round(seq_p50 / local_p50, 3),
                                  "server_segment_p50_ms": round(1000 * statistics.median(inside), 1),
                                  "overhead_vs_server_segment_p50": round(statistics.median(
                                      [a / b for a, b in zip(seq, inside)]), 3),
                                  "overhead_ms_p50": round(1000 * statistics.median(
                                      [a - b for a, b in zip(seq, inside)]), 1)},
            "concurrent": {"clients": args.clients, "requests": args.requests, "ok": len(latencies),
                           "errors": errors, "seconds": round(wall, 2),
                           "requests_per_s": round(len(latencies) / wall, 2),
                           "p50_ms": round(1000 * pct(latencies, 50), 1), "p95_ms": round(1000 * pct(latencies, 95), 1),
                           "p99_ms": round(1000 * pct(latencies, 99), 1),
                           "service_ms_per_request": round(1000 * wall * workers / max(1, len(latencies)), 1),
                           "throughput_vs_in_process": round((len(latencies) / wall) * local_p50, 3)},
            "server_rss_mb": {"before": round(rss_before, 1), "after": round(rss_after, 1)},
            "server_exit_code": rc, "smoke": args.smoke,
        }
        if args.json:
            print(json.dumps(out, indent=1))
            return
        c, s = out["concurrent"], out["sequential_client"]
        print(f"database: {out['extractor']}, vocabulary {vocab}, image {out['image']}; server workers {workers}, "
              f"{out['cpus']} CPUs")
        print(f"in-process segment p50:      {out['in_process']['p50_ms']} ms")
        print(f"one client, sequential p50:  {s['p50_ms']} ms (p95 {s['p95_ms']} ms) -> overhead {s['overhead_p50']}x")
        print(f"  per request, vs the server's own segment() call ({s['server_segment_p50_ms']} ms p50): "
              f"{s['overhead_vs_server_segment_p50']}x, +{s['overhead_ms_p50']} ms (upload, decode, queue, PNG, JSON)")
        print(f"{c['clients']} clients, {c['requests']} requests: {c['requests_per_s']} req/s, latency p50 {c['p50_ms']} "
              f"/ p95 {c['p95_ms']} / p99 {c['p99_ms']} ms, errors {c['errors'] or 0}")
        print(f"  service time per request {c['service_ms_per_request']} ms x {workers} worker(s); "
              f"throughput = {c['throughput_vs_in_process']} x in-process serial")
        print(f"server RSS: {out['server_rss_mb']['before']} MB before, {out['server_rss_mb']['after']} MB after; "
              f"exit code {rc}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
