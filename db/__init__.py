"""SQLAlchemy models, engine/session helpers, Alembic migrations and queries."""
