"""Where protodb writes when no database home is given: the user cache.

Caches, converted or optimised models and other machine-local files go to the database home
(``HOME/models``, ``HOME/cache``) or, for a model loaded outside any database (a benchmark, a test,
``protodb.models.extractors.load_extractor`` called directly), to :func:`user_cache_dir` — never to a
path relative to the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "PROTODB_CACHE"


def user_cache_dir() -> Path:
    """``$PROTODB_CACHE``, else ``$XDG_CACHE_HOME/protodb``, else ``~/.cache/protodb`` (absolute)."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(base).expanduser() / "protodb").resolve()
