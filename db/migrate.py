"""Apply Alembic migrations programmatically (`nbhr db upgrade`, and before every run)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Bring the schema to `revision`; a no-op when it is already there. Returns the head.

    Safe when several processes start at once on a new database (workers brought up
    together): each migrates under a lock that only one holds at a time (PostgreSQL: an
    advisory lock of the migration's transaction; SQLite: the database's write lock, taken
    first), and Alembic reads the schema's revision under it, so the ones that waited find
    it done. Without the lock, 4 processes upgrading a new database at once failed with
    "table ... already exists" or a duplicate-key error on both databases."""
    head = head_revision()
    if revision == "head" and current_revision(engine) == head:
        return head
    cfg = alembic_config(engine)
    with engine.connect() as conn:
        _lock_schema(conn)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()
    return head


# PostgreSQL advisory lock key of nbhr's schema migrations ("nbhr" in ASCII).
_MIGRATION_LOCK = 0x6E626872


def _lock_schema(conn: Connection) -> None:
    """Wait for, then hold until `conn` commits, the right to change the schema."""
    backend = conn.dialect.name
    if backend == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
    elif backend == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # waits up to the busy timeout
