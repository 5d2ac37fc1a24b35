"""Services: one concern each, over the typed :class:`protodb.stores.Stores`.

=================  ==========================================================================
``schema``         catalog revision: current, upgrade, downgrade, check; what the database holds
``sets``           prototype sets: commit (crash-safe), resolve names, read vectors, list, tags
``labels``         thing/stuff labels and their history
``vocabs``         vocabularies: create, add, remove, show, list (catalog + built-in data)
``integrity``      verify: artifacts, vectors, model weights, catalog rows
``sharing``        bundles (export/import), remotes (push/pull)
=================  ==========================================================================

Workflows (``protodb.pipeline.build``, ``protodb.segment.run``, ``protodb.inspection``) take the
stores and the services they need; the facade (``protodb.api.ProtoDB``) wires them together.
"""
