"""compliance replies

Revision ID: 0004_messages
Revises: 0006_console
Create Date: 2026-11-29 09:00:00

`compliance_replies` keeps what a HELP answer or STOP confirmation sends (sender, number, text)
beside its `messages` row, so the durable reply workflow sends it without PII in Temporal.
`messages.resends` counts the sends made again after a lost answer (bounded).
"""
from alembic import op
import sqlalchemy as sa


revision = '0004_messages'
down_revision = '0006_console'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resends', sa.Integer(), nullable=False, server_default='0'))
    op.create_table('compliance_replies',
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('src', sa.String(length=32), nullable=False),
    sa.Column('dst', sa.String(length=32), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('message_id')
    )


def downgrade() -> None:
    op.drop_table('compliance_replies')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('resends')
