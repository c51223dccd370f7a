"""beat times per segment and estimator, for heart-rate variability

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 06:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "beats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recording_id", sa.Integer(), nullable=False),
        sa.Column("segment_id", sa.Integer(), nullable=True),
        sa.Column("estimator", sa.String(length=32), nullable=False),
        sa.Column("model_key", sa.String(length=128), nullable=False),
        sa.Column("t_start", sa.Float(), nullable=False),
        sa.Column("t_end", sa.Float(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("times_s", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["recording_id"],
            ["recordings.id"],
            name=op.f("fk_beats_recording_id_recordings"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["segment_id"],
            ["segments.id"],
            name=op.f("fk_beats_segment_id_segments"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_beats")),
        sa.UniqueConstraint(
            "recording_id",
            "estimator",
            "model_key",
            "t_start",
            name=op.f("uq_beats_recording_id_estimator_model_key_t_start"),
        ),
    )
    with op.batch_alter_table("beats", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_beats_segment_id"), ["segment_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("beats", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_beats_segment_id"))
    op.drop_table("beats")
