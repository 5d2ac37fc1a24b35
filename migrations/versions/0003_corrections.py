"""corrections

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

corrections: a user's corrected pixels of one class on one image (image and mask artifacts) with
provenance: the source image's hash, the set and segment settings that produced the corrected result,
the pixels marked, the author and the time. Built into new versions by teach / add-class --with-corrections.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('corrections',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('class_id', sa.String(length=32), nullable=False),
    sa.Column('group_id', sa.String(length=32), nullable=False),
    sa.Column('image_sha256', sa.String(length=64), nullable=False),
    sa.Column('source_sha256', sa.String(length=64), nullable=False),
    sa.Column('mask_sha256', sa.String(length=64), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('pixels', sa.Integer(), nullable=False),
    sa.Column('label_value', sa.Integer(), nullable=True),
    sa.Column('origin', sa.Text(), nullable=True),
    sa.Column('author', sa.String(length=200), nullable=True),
    sa.Column('set_id', sa.String(length=32), nullable=True),
    sa.Column('settings', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('protodb_version', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['class_id'], ['classes.id'], name=op.f('fk_corrections_class_id_classes')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_corrections'))
    )
    with op.batch_alter_table('corrections', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_corrections_class_id'), ['class_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_corrections_group_id'), ['group_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_corrections_image_sha256'), ['image_sha256'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('corrections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_corrections_image_sha256'))
        batch_op.drop_index(batch_op.f('ix_corrections_group_id'))
        batch_op.drop_index(batch_op.f('ix_corrections_class_id'))
    op.drop_table('corrections')
