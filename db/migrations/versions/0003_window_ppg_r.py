"""window ppg r

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 20:14:58.503983
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("windows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ppg_r", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("windows", schema=None) as batch_op:
        batch_op.drop_column("ppg_r")
