"""Durability: journal + snapshots in a data directory, so nothing acknowledged is lost.

See ``dispatcher/docs/DURABILITY.md``. The server-facing pieces:

- ``DurableStore.open(options, engine_factory)``: lock the directory and recover;
- ``store.begin()``: the ``JournaledEngine`` the servicers call;
- ``store.journal.barrier()``: await it before answering (group commit);
- ``await store.close()``: final snapshot on graceful shutdown.
"""

from .journal import FSYNC_MODES, Journal, JournalError
from .records import JournaledEngine, apply_record
from .store import DurabilityOptions, DurableStore, Recovery, RecoveryError, recover

__all__ = [
    "FSYNC_MODES",
    "DurabilityOptions",
    "DurableStore",
    "Journal",
    "JournalError",
    "JournaledEngine",
    "Recovery",
    "RecoveryError",
    "apply_record",
    "recover",
]
