"""granted waiters, send slots

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 01:00:00

Waiters gain the step they wait on and the credits a wake set aside for them (granted at once,
in first-come order); the queue gets its (account, credits_granted, since) index; `send_slots` paces provider
calls across workers.
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('send_slots',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('next_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('sms_waiters', schema=None) as batch_op:
        batch_op.add_column(sa.Column('step', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('credits_granted', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('granted_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_sms_waiters_queue', ['account_id', 'credits_granted', 'since'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sms_waiters', schema=None) as batch_op:
        batch_op.drop_index('ix_sms_waiters_queue')
        batch_op.drop_column('granted_at')
        batch_op.drop_column('credits_granted')
        batch_op.drop_column('step')
    op.drop_table('send_slots')
