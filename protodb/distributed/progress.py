"""Progress aggregated over the cluster: workers add counts to one small actor; the driver takes them
(every half second or so) and feeds its progress bars. Counts travel, never data."""

from __future__ import annotations

import logging
import uuid
from typing import Callable

from protodb.lazy import lazy_import

ray = lazy_import("ray")

log = logging.getLogger(__name__)


class Counter:
    """A Ray actor (no CPU): ``add(key, n)`` from workers (fire and forget), ``take()`` from the driver."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + int(n)

    def take(self) -> dict[str, int]:
        out, self.counts = self.counts, {}
        return out


def start_counter() -> tuple[object, str]:
    """A new counter actor and its name (workers look it up by name: an actor handle among a restartable
    actor's constructor arguments would live in the object store)."""
    name = f"protodb-progress-{uuid.uuid4().hex[:12]}"
    return ray.remote(num_cpus=0, max_restarts=-1)(Counter).options(name=name).remote(), name


def counter_named(name: str | None):
    """The counter ``name`` (None when there is none or it cannot be reached)."""
    if not name:
        return None
    try:
        return ray.get_actor(name)
    except Exception as err:  # noqa: BLE001 - progress is optional
        log.debug("no progress counter %s: %s", name, err)
        return None


class Poller:
    """Driver side: ``poll()`` moves the counts taken from the counter into ``callback(key, n, None)``."""

    def __init__(self, counter, callback: Callable[[str, int, "int | None"], None]):
        self.counter, self.callback = counter, callback

    def poll(self, timeout: float = 5.0) -> None:
        try:
            counts = ray.get(self.counter.take.remote(), timeout=timeout)
        except Exception as err:  # noqa: BLE001 - a lost counter only costs progress display
            log.debug("progress counter unavailable: %s", err)
            return
        for key, n in counts.items():
            if n:
                self.callback(key, n, None)
