"""Session metadata stores: where a session's facts live so that any replica can serve it.

``SessionStore`` is the contract; ``MemoryStore`` is the embedded default for a single
process; ``RedisStore`` is for several replicas. ``open_store`` picks one from a URL.
"""

from vmcp.store.base import SessionStore, validate_metadata, validate_session_id
from vmcp.store.factory import open_store
from vmcp.store.memory import MemoryStore
from vmcp.store.redis import RedisStore

__all__ = [
    "MemoryStore",
    "RedisStore",
    "SessionStore",
    "open_store",
    "validate_metadata",
    "validate_session_id",
]
