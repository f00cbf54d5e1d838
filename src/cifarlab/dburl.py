"""Database URLs as users type them (SQLAlchemy's: a search's --storage, an MLflow store): the
driver that is missing, a failure in one line, and the URL without its password.

SQLAlchemy picks a driver for a bare `postgresql://`: psycopg2 up to 2.0, psycopg (3) from 2.1.
cifarlab's `postgres` extra installs psycopg 3, so the docs spell the URL
`postgresql+psycopg://user@host/db`, which means the same driver under every SQLAlchemy 2.

    >>> from cifarlab import dburl
    >>> dburl.redact("postgresql+psycopg://lab:secret@db.example/cl")
    'postgresql+psycopg://lab:***@db.example/cl'
"""

from __future__ import annotations

from typing import Any

from cifarlab.errors import first_line

CONNECT_TIMEOUT = 20  # seconds; a URL's own ?connect_timeout=N wins

# What to install for a driver SQLAlchemy names (a URL's +driver, or the dialect's default).
DRIVERS = {
    "psycopg": "the PostgreSQL driver psycopg (3): pip install 'cifarlab[postgres]'",
    "psycopg2": "the PostgreSQL driver psycopg2: pip install psycopg2-binary; or pip install "
                "'cifarlab[postgres]' (psycopg 3) and write the URL as postgresql+psycopg://...",
}


def redact(url: str) -> str:
    """The URL without its password, for messages: user:***@host."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, user = head.partition("://")
    name, colon, _ = user.partition(":")
    return f"{scheme}://{name}:***@{tail}" if colon else url


def connect_args(url: str) -> dict[str, Any]:
    """libpq waits for an unreachable host as long as TCP does (minutes): give up sooner."""
    if url.startswith("postgresql") and "connect_timeout" not in url:
        return {"connect_timeout": CONNECT_TIMEOUT}
    return {}


def missing_driver(url: str) -> str | None:
    """What to install when the URL's database driver does not import; None when it does (or
    when the URL cannot be read: opening it then says why)."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        dialect = parsed.get_dialect()  # SQLAlchemy's own module for the database: no driver yet
    except Exception:
        return None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        driver = str(getattr(dialect, "driver", "") or exc.name or "")
        return DRIVERS.get(driver, f"the {parsed.get_backend_name()} driver {driver}, which is "
                                   f"not installed ({exc})")
    except Exception:
        return None
    return None


def explain(exc: BaseException) -> str:
    """A SQLAlchemy error (server down, no such database or role, a bad URL) as one line."""
    text = first_line(exc)
    if text.startswith("Can't load plugin: sqlalchemy.dialects:"):
        scheme = text.rsplit(":", 1)[1]
        hint = " (PostgreSQL is spelled postgresql://)" if scheme.startswith("postgres") else ""
        text = f"unknown database '{scheme}'{hint}"
    if text.startswith("Could not parse SQLAlchemy URL"):
        text = "not a database URL (e.g. postgresql+psycopg://user@host/db, sqlite:///file.db)"
    return text
