"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('classes',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('protodb_version', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_classes')),
    sa.UniqueConstraint('name', name=op.f('uq_classes_name'))
    )
    op.create_table('extractors',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('weights_hash', sa.String(length=64), nullable=True),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('protodb_version', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_extractors'))
    )
    with op.batch_alter_table('extractors', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_extractors_name'), ['name'], unique=False)

    op.create_table('generator_specs',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('model_id', sa.String(length=500), nullable=False),
    sa.Column('revision', sa.String(length=200), nullable=True),
    sa.Column('scheduler', sa.String(length=100), nullable=False),
    sa.Column('steps', sa.Integer(), nullable=False),
    sa.Column('guidance', sa.Float(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('dtype', sa.String(length=16), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('protodb_version', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_generator_specs'))
    )
    op.create_table('settings',
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_settings'))
    )
    op.create_table('vocabularies',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('background', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('protodb_version', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vocabularies')),
    sa.UniqueConstraint('name', name=op.f('uq_vocabularies_name'))
    )
    op.create_table('class_labels',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('class_id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('prompt', sa.Text(), nullable=True),
    sa.Column('raw_answer', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('protodb_version', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['class_id'], ['classes.id'], name=op.f('fk_class_labels_class_id_classes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_class_labels'))
    )
    with op.batch_alter_table('class_labels', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_class_labels_class_id'), ['class_id'], unique=False)

    op.create_table('generation_runs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('class_id', sa.String(length=32), nullable=False),
    sa.Column('generator_spec_id', sa.String(length=64), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('negative_prompt', sa.Text(), nullable=True),
    sa.Column('base_seed', sa.Integer(), nullable=False),
    sa.Column('num_images', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('protodb_version', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['class_id'], ['classes.id'], name=op.f('fk_generation_runs_class_id_classes')),
    sa.ForeignKeyConstraint(['generator_spec_id'], ['generator_specs.id'], name=op.f('fk_generation_runs_generator_spec_id_generator_specs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_generation_runs'))
    )
    with op.batch_alter_table('generation_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_generation_runs_class_id'), ['class_id'], unique=False)

    op.create_table('vocabulary_members',
    sa.Column('vocabulary_id', sa.String(length=32), nullable=False),
    sa.Column('class_id', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('ref', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['class_id'], ['classes.id'], name=op.f('fk_vocabulary_members_class_id_classes')),
    sa.ForeignKeyConstraint(['vocabulary_id'], ['vocabularies.id'], name=op.f('fk_vocabulary_members_vocabulary_id_vocabularies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('vocabulary_id', 'class_id', name=op.f('pk_vocabulary_members'))
    )
    op.create_table('prototype_sets',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('class_id', sa.String(length=32), nullable=False),
    sa.Column('extractor_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('config_hash', sa.String(length=64), nullable=False),
    sa.Column('run_id', sa.String(length=32), nullable=True),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('vector_table', sa.String(length=200), nullable=False),
    sa.Column('vector_table_version', sa.Integer(), nullable=True),
    sa.Column('nbytes', sa.Integer(), nullable=False),
    sa.Column('ready_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('protodb_version', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['class_id'], ['classes.id'], name=op.f('fk_prototype_sets_class_id_classes')),
    sa.ForeignKeyConstraint(['extractor_id'], ['extractors.id'], name=op.f('fk_prototype_sets_extractor_id_extractors')),
    sa.ForeignKeyConstraint(['run_id'], ['generation_runs.id'], name=op.f('fk_prototype_sets_run_id_generation_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_prototype_sets')),
    sa.UniqueConstraint('class_id', 'extractor_id', 'version', name=op.f('uq_prototype_sets_class_id_extractor_id_version'))
    )
    with op.batch_alter_table('prototype_sets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_prototype_sets_config_hash'), ['config_hash'], unique=False)
        batch_op.create_index('ix_prototype_sets_lookup', ['class_id', 'extractor_id', 'status'], unique=False)

    op.create_table('support_images',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('class_id', sa.String(length=32), nullable=False),
    sa.Column('run_id', sa.String(length=32), nullable=True),
    sa.Column('index_in_run', sa.Integer(), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('artifact_sha256', sa.String(length=64), nullable=False),
    sa.Column('attention_sha256', sa.String(length=64), nullable=True),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=True),
    sa.Column('prompt', sa.Text(), nullable=True),
    sa.Column('origin', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('protodb_version', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['class_id'], ['classes.id'], name=op.f('fk_support_images_class_id_classes')),
    sa.ForeignKeyConstraint(['run_id'], ['generation_runs.id'], name=op.f('fk_support_images_run_id_generation_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_support_images')),
    sa.UniqueConstraint('run_id', 'index_in_run', name=op.f('uq_support_images_run_id_index_in_run'))
    )
    with op.batch_alter_table('support_images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_support_images_artifact_sha256'), ['artifact_sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_support_images_class_id'), ['class_id'], unique=False)

    op.create_table('masks',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('image_id', sa.String(length=32), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('artifact_sha256', sa.String(length=64), nullable=False),
    sa.Column('method', sa.String(length=64), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('extractor_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('protodb_version', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['extractor_id'], ['extractors.id'], name=op.f('fk_masks_extractor_id_extractors')),
    sa.ForeignKeyConstraint(['image_id'], ['support_images.id'], name=op.f('fk_masks_image_id_support_images')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_masks'))
    )
    with op.batch_alter_table('masks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_masks_image_id'), ['image_id'], unique=False)

    op.create_table('prototype_set_images',
    sa.Column('set_id', sa.String(length=32), nullable=False),
    sa.Column('image_id', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['support_images.id'], name=op.f('fk_prototype_set_images_image_id_support_images')),
    sa.ForeignKeyConstraint(['set_id'], ['prototype_sets.id'], name=op.f('fk_prototype_set_images_set_id_prototype_sets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('set_id', 'image_id', name=op.f('pk_prototype_set_images'))
    )
    op.create_table('tags',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('set_id', sa.String(length=32), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('protodb_version', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['set_id'], ['prototype_sets.id'], name=op.f('fk_tags_set_id_prototype_sets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tags')),
    sa.UniqueConstraint('name', 'set_id', name=op.f('uq_tags_name_set_id'))
    )
    with op.batch_alter_table('tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tags_name'), ['name'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tags_name'))

    op.drop_table('tags')
    op.drop_table('prototype_set_images')
    with op.batch_alter_table('masks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_masks_image_id'))

    op.drop_table('masks')
    with op.batch_alter_table('support_images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_support_images_class_id'))
        batch_op.drop_index(batch_op.f('ix_support_images_artifact_sha256'))

    op.drop_table('support_images')
    with op.batch_alter_table('prototype_sets', schema=None) as batch_op:
        batch_op.drop_index('ix_prototype_sets_lookup')
        batch_op.drop_index(batch_op.f('ix_prototype_sets_config_hash'))

    op.drop_table('prototype_sets')
    op.drop_table('vocabulary_members')
    with op.batch_alter_table('generation_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_generation_runs_class_id'))

    op.drop_table('generation_runs')
    with op.batch_alter_table('class_labels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_class_labels_class_id'))

    op.drop_table('class_labels')
    op.drop_table('vocabularies')
    op.drop_table('settings')
    op.drop_table('generator_specs')
    with op.batch_alter_table('extractors', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_extractors_name'))

    op.drop_table('extractors')
    op.drop_table('classes')
