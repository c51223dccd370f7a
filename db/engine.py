"""Engines and sessions for every supported database, with errors a user can read."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_URL = "sqlite:///nbhr.sqlite"


class DatabaseError(RuntimeError):
    """The database cannot be used; the message is one line fit for a terminal."""


def default_url() -> str:
    return os.environ.get("NBHR_DB_URL") or DEFAULT_URL


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, safe to print or log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable database URL>"


def _mask_unparsed(url: str) -> str:
    """A URL that does not parse, with anything between '://user:' and '@' hidden."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI types vary
    # WAL lets readers (nbhr status) run while workers write; busy_timeout makes concurrent
    # writers from the local process pool wait instead of failing with "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """Create an engine for `url`; raise DatabaseError with a one-line cause on bad URLs."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseError(f"invalid database URL {_mask_unparsed(url)!r}: {exc}") from None
    kwargs: dict = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 60}
    elif parsed.get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 10}
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise DatabaseError(f"cannot use database {mask_url(url)}: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def check_connection(engine: Engine) -> None:
    """Raise DatabaseError (one line) when the database does not answer."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        cause = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseError(
            f"cannot connect to database {mask_url(engine.url.render_as_string(False))}: {cause}"
        ) from None


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine per URL per process (workers call this lazily, never at import time)."""
    return make_engine(url)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    with session_factory(engine)() as session, session.begin():
        yield session
