"""The owner's secrets and records: the master key and the per-licensee keys derived from it
(:mod:`~tracemark.registry.keys`), and the SQLite registry of datasets, licensees, copies, audits and
shadows (:mod:`~tracemark.registry.database`), its schema (:mod:`~tracemark.registry.schema`) and the
restore of a backup (:mod:`~tracemark.registry.restore`)."""

from tracemark.registry.database import Registry, key_check_value

__all__ = ["Registry", "key_check_value"]
