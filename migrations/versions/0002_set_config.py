"""set config and vector checksum

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

prototype_sets.config: the resolved build configuration stored whole with each set (its canonical
hash is config_hash). prototype_sets.vectors_sha256: checksum of the set's vectors at commit time,
checked by verify and when a set is loaded.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('prototype_sets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('config', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('vectors_sha256', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('prototype_sets', schema=None) as batch_op:
        batch_op.drop_column('vectors_sha256')
        batch_op.drop_column('config')
