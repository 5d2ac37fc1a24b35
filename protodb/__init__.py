"""protodb: training-free open-vocabulary segmentation (OVDiff) as a persistent prototype database.

>>> import protodb
>>> db = protodb.open("./my-protos")          # creates the catalog on first use
>>> db.info().schema_revision
'0002'
"""

from __future__ import annotations

from protodb._version import __version__  # noqa: F401

from protodb import api
from protodb.errors import DamagedData, InvalidInput, NotFound, ProtoDBError, SchemaMismatch


def open(path=None, *, catalog_url=None, create=True):  # noqa: A001 - mirrors builtins.open on purpose
    """Open (and on first use create) a prototype database.

    path: folder holding the catalog (``catalog.sqlite``), vectors and artifacts; defaults to
    ``$PROTODB_HOME`` or ``~/.protodb``. catalog_url: any SQLAlchemy URL (PostgreSQL for teams);
    defaults to ``$PROTODB_CATALOG_URL`` or the SQLite file in ``path``.
    """
    return api.ProtoDB(path, catalog_url=catalog_url, create=create)


__all__ = ["open", "ProtoDBError", "NotFound", "SchemaMismatch", "InvalidInput", "DamagedData", "__version__"]
