"""Logging: every module that decides something logs it (``logging.getLogger(__name__)``).

Silent by default (a library must not print); ``protodb -v`` / ``--verbose`` or ``PROTODB_LOG=debug``
(also ``info``, ``warning``) shows the decisions on stderr. Library warnings (Pillow's "Corrupt EXIF
data", scikit-learn's ConvergenceWarning, ...) are routed into logging too, so they appear only with
``-v`` instead of interleaving with the command's output.
"""

from __future__ import annotations

import logging
import os
import sys

ENV = "PROTODB_LOG"
_HANDLER: logging.Handler | None = None

logging.getLogger("protodb").addHandler(logging.NullHandler())


def level_from(verbose: int = 0) -> int | None:
    """The level ``-v`` (INFO) / ``-vv`` (DEBUG) or ``$PROTODB_LOG`` asks for; None: stay silent."""
    if verbose >= 2:
        return logging.DEBUG
    if verbose == 1:
        return logging.INFO
    name = os.environ.get(ENV, "").strip().upper()
    if not name:
        return None
    return logging.getLevelName(name) if isinstance(logging.getLevelName(name), int) else logging.DEBUG


def configure(verbose: int = 0) -> None:
    """Set up logging for a command-line run: warnings always go to logging; with a level (see
    :func:`level_from`) protodb's and the libraries' records are printed on stderr."""
    global _HANDLER
    logging.captureWarnings(True)
    level = level_from(verbose)
    root_pdb = logging.getLogger("protodb")
    warn = logging.getLogger("py.warnings")
    warn.propagate = False
    if _HANDLER is not None:
        root_pdb.removeHandler(_HANDLER)
        warn.removeHandler(_HANDLER)
        _HANDLER = None
    if level is None:
        warn.addHandler(logging.NullHandler())
        return
    _HANDLER = logging.StreamHandler(sys.stderr)
    _HANDLER.setFormatter(logging.Formatter("%(levelname).1s %(name)s: %(message)s"))
    for lg in (root_pdb, warn):
        lg.addHandler(_HANDLER)
        lg.setLevel(level)
