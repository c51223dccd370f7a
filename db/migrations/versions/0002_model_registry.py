"""model registry

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 20:02:09.975208
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("input_spec", sa.JSON(), nullable=False),
        sa.Column("trained_on", sa.Text(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("key", name=op.f("uq_models_key")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_models_name_version")),
        sa.UniqueConstraint("sha256", name=op.f("uq_models_sha256")),
    )


def downgrade() -> None:
    op.drop_table("models")
