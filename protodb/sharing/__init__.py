"""Sharing prototype databases between teams.

Three ways, one format:

* **Bundles** (``bundle/``): one deterministic tar(.gz) with a manifest, the catalog rows of the
  chosen prototype sets and everything they depend on (JSON), their vectors (Arrow IPC) and
  artifacts (content-addressed). ``protodb export`` / ``protodb import``.
* **Remotes** (``remote.py``): the same members stored content-addressed on any fsspec URL
  (``s3://...``, ``file://...``) with small refs naming bundle manifests. ``protodb push`` / ``pull``.
* **A live database**: a PostgreSQL catalog with vectors and artifacts on object storage, chosen by
  configuration only (``protodb init --catalog postgresql://... --vectors s3://... --artifacts
  s3://...``; the URLs are recorded in the catalog's settings). Vector commits are serialised by
  :func:`protodb.catalog.locks.vector_lock`; credentials and endpoints come from the standard AWS
  environment (``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP=true`` for plain http), read by s3fs and LanceDB.

Importing (``merge.py``) never overwrites: identical objects are deduplicated by identifier or
hash, sets of a class that exists here with other provenance become new versions, and every
hash and the schema revision are checked before anything is written.
"""
