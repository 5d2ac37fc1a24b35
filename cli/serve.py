"""Serving: ``protodb serve`` (the HTTP API and web page of :mod:`protodb.serve`)."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from protodb import serve as serve_pkg  # light: says what is missing without importing FastAPI
from protodb.errors import InvalidInput
from protodb.segment.options import SegmentOptions, parse_levels
from protodb.speed import speed_preset
from protodb.serve.config import ServeConfig, from_env_token, served_names
from protodb_cli.app import Ctx, command
from protodb_cli.options import BackgroundOpt, DeviceOpt, DtypeOpt, ExtractorOpt, LevelsOpt, PamrOpt, SkipOpt, SpeedOpt
from protodb_cli.output import say


top = typer.Typer()


@command(top, "serve", json=False)
def serve(
    ctx: Ctx,
    vocab: Annotated[Optional[list[str]], typer.Option("--vocab", help="Vocabulary to keep warm (repeat, or a comma list): loaded at start, never evicted. Other catalog vocabularies and class lists are served on demand.")] = None,
    vocab_only: Annotated[bool, typer.Option("--vocab-only", help="Serve only the --vocab vocabularies, with the server's options (no other vocabularies, class lists or per-request options).")] = False,
    max_warm: Annotated[int, typer.Option(help="Warm segmenters kept besides the --vocab ones (other vocabularies, class lists, option variants); least recently used go first.")] = 8,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default; anything else is reachable from the network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port; the URL is printed).")] = 8765,
    allow_writes: Annotated[bool, typer.Option("--allow-writes", help="Enable write endpoints (relabel thing/stuff); each needs 'Authorization: Bearer $PROTODB_SERVE_TOKEN'.")] = False,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body in MB (checked while reading).")] = 20.0,
    workers: Annotated[Optional[int], typer.Option(help="Segmenting threads (default: half the cores, 1 to 4).")] = None,
    queue: Annotated[int, typer.Option("--queue", help="Requests that may wait for a worker; more get 503 with Retry-After.")] = 8,
    reload_interval: Annotated[float, typer.Option(help="Seconds between catalog checks for new ready sets (served without a restart).")] = 2.0,
    allow_host: Annotated[Optional[list[str]], typer.Option("--allow-host", help="Extra Host header names to accept (e.g. a reverse proxy's; '*': any).")] = None,
    # defaults of every request (a request may set its own: extractor, levels, background, pamr, skip_missing)
    extractor: ExtractorOpt = None, levels: LevelsOpt = "class,instance,part", background: BackgroundOpt = None,
    pamr: PamrOpt = False, skip_missing: SkipOpt = False, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto",
    speed: SpeedOpt = None,
    max_jobs: Annotated[int, typer.Option(help="Jobs (/api/jobs: segmenting followed by the page, with progress and cancel) held at once; the oldest finished are forgotten first, and when all are unfinished a new one gets 503.")] = 16,
    job_ttl: Annotated[float, typer.Option(help="Seconds a finished job's result is kept for its client.")] = 300.0,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request on stderr: time, client, request line, status, bytes sent, milliseconds.")] = False,
) -> None:
    """Serve the database over HTTP: a JSON API and a web page (gallery, sets and their parts,
    segmenting an uploaded image). Read-only unless --allow-writes and PROTODB_SERVE_TOKEN are set.

    Segmenters stay warm per (vocabulary or class list, extractors, options). New ready sets of
    served classes (another process's add-class, an import, a relabel, a vocabulary edit) are picked
    up while running, within --reload-interval seconds. Prints the URL on stdout; Ctrl-C or SIGTERM
    stops. API documentation: /api/docs (also at /docs). Images over 80 MP are refused (one limit,
    protodb's own). Long segments can run as jobs (POST /api/jobs/segment: place in the queue,
    elapsed time, cancel), as the segment page does. HEAD is answered wherever GET is.

    \b
    Example: protodb serve --db demo-out/db
    Example: protodb serve --vocab voc --port 8765
    Example: protodb serve --vocab camvid --speed fast   # whole image only, int8 on CPUs without bf16
    Example: PROTODB_SERVE_TOKEN=$(openssl rand -hex 16) protodb serve --allow-writes
    """
    if serve_pkg.missing_dependencies():
        raise InvalidInput(serve_pkg.INSTALL_HINT)
    if speed:
        speed_preset(speed)  # one line for a bad name, before anything loads
    token = from_env_token()
    extra_hosts = tuple(allow_host or ())
    config = ServeConfig(
        db_path=ctx.db_path, catalog_url=ctx.catalog, vocabs=served_names(vocab or ()),
        options=SegmentOptions(extractors=tuple(extractor or ()), levels=parse_levels(levels), background=background,
                               pamr=pamr, device=device, dtype=dtype, skip_missing=skip_missing, speed=speed),
        allow_writes=allow_writes, token=token if allow_writes else None,
        max_upload=int(max_upload_mb * 1024 * 1024), queue_size=queue, reload_interval=reload_interval,
        host=host, port=port, vocab_only=vocab_only, max_warm=max_warm, max_jobs=max_jobs, job_ttl=job_ttl,
        access_log=access_log,
        **({"workers": workers} if workers is not None else {}),
    )
    if extra_hosts:
        config = config.replace(allowed_hosts=tuple(config.hosts()) + extra_hosts)
    config.check()
    ctx.db  # noqa: B018 - a missing database is one line here, before anything loads
    ctx.close()  # the server opens its own

    def announce(url: str) -> None:
        warm = ", ".join(config.vocabs) or "none yet"
        more = "" if config.vocab_only else "; other vocabularies and class lists on demand"
        say(f"protodb serve: {url} (warm: {warm}{more}; writes {'on' if config.writes_enabled else 'off'}; "
            "Ctrl-C stops)", ctx.quiet)
        if host not in ("127.0.0.1", "localhost", "::1"):
            say(f"warning: listening on {host}: reachable from other machines", ctx.quiet)
        print(url, flush=True)
        sys.stdout.flush()

    from protodb.serve.server import serve as run_server  # deferred: FastAPI + uvicorn, only when serving

    run_server(config, announce=announce)
