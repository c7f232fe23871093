"""The live store: what changes between two trainings, shared by every worker, host and batch.

One interface (`LiveStore`), one module per backend: SQLite (one host, any number of workers; the
default: one file under the working folder, `OMNI_CONTEXT_DB` names another) and PostgreSQL
(several hosts: `OMNI_STORE_URL=postgresql://USER@HOST:PORT/DATABASE`). `open_live_store` picks the
backend from the URL (``sqlite:////absolute/path``, as SQLAlchemy spells it, or ``postgresql://``
or ``postgres://``). `PostgresLiveStore` is imported on first use: SQLite users never load psycopg.
"""

from __future__ import annotations

import os
from pathlib import Path

from features.live_store._base import (
    CONSENT,
    CONTACT_COLUMNS,
    ENGAGED,
    ENGAGEMENT_EVENTS,
    EVENT_TYPES,
    MESSAGE_ACTIVITY_COLUMNS,
    MESSAGE_SENT,
    POSTED_EVENT_TYPES,
    PRODUCT_EVENTS,
    SENT,
    Contact,
    LiveState,
    LiveStore,
    to_epoch,
)
from features.live_store._sqlite import SQLiteLiveStore

__all__ = [
    "CONSENT",
    "CONTACT_COLUMNS",
    "ENGAGED",
    "ENGAGEMENT_EVENTS",
    "EVENT_TYPES",
    "MESSAGE_ACTIVITY_COLUMNS",
    "MESSAGE_SENT",
    "POSTED_EVENT_TYPES",
    "PRODUCT_EVENTS",
    "SENT",
    "Contact",
    "LiveState",
    "LiveStore",
    "PostgresLiveStore",
    "SQLiteLiveStore",
    "open_live_store",
    "store_url",
    "to_epoch",
]

STORE_FILE = "context.db"


def __getattr__(name: str):
    """`PostgresLiveStore`, imported on first use (its module and psycopg only load for a server database)."""
    if name == "PostgresLiveStore":
        from features.live_store._postgres import PostgresLiveStore

        return PostgresLiveStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def store_url(work_dir: str | os.PathLike[str]) -> str:
    """The live store this process uses: `OMNI_STORE_URL`, else `OMNI_CONTEXT_DB`, else
    `<work_dir>/context.db`, as a URL."""
    url = os.environ.get("OMNI_STORE_URL")
    if url:
        return url
    path = os.environ.get("OMNI_CONTEXT_DB") or Path(work_dir) / STORE_FILE
    return f"sqlite:///{Path(path).resolve()}"


def open_live_store(url: str, **options) -> LiveStore:
    """The live store at `url` (``sqlite:///PATH`` or ``postgresql://...``); `options` go to the
    backend (busy_timeout_ms is SQLite's only)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(
            f"OMNI_STORE_URL: {url!r} is not a URL (expected sqlite:///PATH or postgresql://...)"
        )
    if scheme == "sqlite":
        # as SQLAlchemy spells it: sqlite:///relative/path, sqlite:////absolute/path
        path = rest[1:] if rest.startswith("/") else ""
        if not path:
            raise ValueError(f"OMNI_STORE_URL: {url!r} names no file (expected sqlite:///PATH)")
        return SQLiteLiveStore(path, **options)
    if scheme in ("postgresql", "postgres"):
        # imported here: psycopg is loaded only by those who use a server database
        from features.live_store._postgres import PostgresLiveStore

        allowed = {"max_events_per_customer", "max_age_days", "view_window_hours", "channels"}
        return PostgresLiveStore(url, **{k: v for k, v in options.items() if k in allowed})
    raise ValueError(
        f"OMNI_STORE_URL: unknown store {scheme!r}; expected sqlite:///PATH or postgresql://HOST/DATABASE"
    )
