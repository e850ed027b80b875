"""The model cache, and the leaves everyone shares about it.

    entry.py    leaf: Entry, State, Budgets, mms_model_name
    events.py   leaf: CacheEvents (what the cache reports) and CacheView (what observers read)
    backend.py  leaf: the Backend and Models protocols, Route, Reply, ModelLost
    store.py    the extracted models on disk, fetched from the model source
    keeping.py  what the operator keeps hot: pins, the pre-load, the usage record (imports no cache)
    core.py     ModelCache: entries, single flight, admission, eviction, budgets

Only the leaves are imported here, so that metrics, logs and backends importing them do not import the cache
itself (``from openmme.endpoint.cache.core import ModelCache`` for that).
"""

from openmme.endpoint.cache.backend import Backend, ModelLost, Models, Reply, Route
from openmme.endpoint.cache.entry import HELD, LOADED, Budgets, Entry, State, mms_model_name
from openmme.endpoint.cache.events import CacheEvents, CacheView

__all__ = [
    "HELD",
    "LOADED",
    "Backend",
    "Budgets",
    "CacheEvents",
    "CacheView",
    "Entry",
    "ModelLost",
    "Models",
    "Reply",
    "Route",
    "State",
    "mms_model_name",
]
