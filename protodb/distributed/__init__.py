"""Scale-out on Ray: many workers building classes, and datasets segmented through Ray Data.

Nothing here is imported unless a command is given ``--ray`` (or the Python API asks for it); Ray itself
is imported on first use (:func:`protodb.lazy.lazy_import`).

=======================  ===========================================================================
``cluster``              ``--ray local|auto|ADDRESS``: start or join Ray; refuse a multi-node cluster
                         on a database only one machine can reach (SQLite, local folders)
``build``                add-class / add-vocab: generation shards, then one task per class, on actors
                         that keep their models loaded; results written by the workers themselves
``segment``              segment: inputs listed (local or s3://), finished ones skipped, Ray Data
                         ``map_batches`` on an actor pool holding the warm segmenter
``plan``                 ``--dry-run``: what would run, and an estimate of GPU-hours (no Ray needed)
``progress``             counters the workers add to and the driver's progress bars read
=======================  ===========================================================================

Safety under faults comes from the database, not from Ray: a set becomes visible in one transaction
(pending -> ready) and the same config gives one set (``SetService.commit_unless_present``); generated
images are stored one by one by (run, index), so a retried or duplicated task finds them. Ray retries a
task whose worker died (actors restart, ``max_task_retries``); a re-run driver skips classes already
built and inputs already segmented.
"""
