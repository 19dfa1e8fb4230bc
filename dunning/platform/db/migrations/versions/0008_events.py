"""outbound events, end-of-dunning actions

Revision ID: 0008_events
Revises: 0007_locales
Create Date: 2026-11-29 08:30:00

Webhook endpoints per account, the event outbox, deliveries and every delivery attempt
(dunning.events); `charge_attempts` (open invoices paid when a card changes); `campaigns` (per plan); customers gain `paused`, `paused_until`, `excluded` and accounts
`daily_message_limit` (one conversation per customer); accounts gain `on_exhausted` and `charge_on_card_update`; `case_actions`
records the end-of-dunning action taken through Stripe, once per case.
"""
from alembic import op
import sqlalchemy as sa


revision = '0008_events'
down_revision = '0007_locales'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('webhook_endpoints',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('url', sa.String(length=2000), nullable=False),
    sa.Column('secret', sa.String(length=200), nullable=False),
    sa.Column('event_types', sa.JSON(), nullable=True),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('disabled_reason', sa.String(length=400), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_webhook_endpoints_account_id', 'webhook_endpoints', ['account_id'])
    op.create_table('outbox_events',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=40), nullable=False),
    sa.Column('dedupe_key', sa.String(length=400), nullable=True),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('case_id', sa.String(length=300), nullable=True),
    sa.Column('type', sa.String(length=40), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('event_id'),
    sa.UniqueConstraint('dedupe_key')
    )
    op.create_index('ix_outbox_events_account_seq', 'outbox_events', ['account_id', 'seq'])
    op.create_index('ix_outbox_events_case_id', 'outbox_events', ['case_id'])
    op.create_table('event_deliveries',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('event_seq', sa.Integer(), nullable=False),
    sa.Column('endpoint_id', sa.String(length=40), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.String(length=400), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['event_seq'], ['outbox_events.seq'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['endpoint_id'], ['webhook_endpoints.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_event_deliveries_event_seq', 'event_deliveries', ['event_seq'])
    op.create_index('ix_event_deliveries_endpoint_status', 'event_deliveries',
                    ['endpoint_id', 'status', 'id'])
    op.create_table('delivery_attempts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=False),
    sa.Column('attempted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.String(length=400), nullable=True),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['delivery_id'], ['event_deliveries.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_delivery_attempts_delivery_id', 'delivery_attempts', ['delivery_id'])
    op.create_table('case_actions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('workflow_id', sa.String(length=300), nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=False),
    sa.Column('stripe_ref', sa.String(length=100), nullable=True),
    sa.Column('error', sa.String(length=400), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('workflow_id', 'action', name='uq_case_actions_case')
    )
    op.create_index('ix_case_actions_workflow_id', 'case_actions', ['workflow_id'])
    op.create_table('charge_attempts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('workflow_id', sa.String(length=300), nullable=False),
    sa.Column('invoice_id', sa.String(length=128), nullable=False),
    sa.Column('trigger_event', sa.String(length=200), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('decline_code', sa.String(length=64), nullable=True),
    sa.Column('error', sa.String(length=400), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('idempotency_key')
    )
    op.create_index('ix_charge_attempts_account_id', 'charge_attempts', ['account_id'])
    op.create_index('ix_charge_attempts_workflow_id', 'charge_attempts', ['workflow_id'])
    op.create_table('campaigns',
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('plan', sa.String(length=128), nullable=False),
    sa.Column('schedule', sa.String(length=400), nullable=False),
    sa.Column('grace_seconds', sa.Integer(), nullable=False),
    sa.Column('sms_steps', sa.JSON(), nullable=True),
    sa.Column('on_exhausted', sa.String(length=24), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('account_id', 'plan')
    )
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('on_exhausted', sa.String(length=24), nullable=False,
                                      server_default='none'))
        batch_op.add_column(sa.Column('charge_on_card_update', sa.Boolean(), nullable=False,
                                      server_default=sa.true()))
        batch_op.add_column(sa.Column('daily_message_limit', sa.Integer(), nullable=False,
                                      server_default='1'))
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('paused', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('paused_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('excluded', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_column('excluded')
        batch_op.drop_column('paused_until')
        batch_op.drop_column('paused')
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_column('daily_message_limit')
        batch_op.drop_column('charge_on_card_update')
        batch_op.drop_column('on_exhausted')
    op.drop_table('campaigns')
    op.drop_index('ix_charge_attempts_workflow_id', table_name='charge_attempts')
    op.drop_index('ix_charge_attempts_account_id', table_name='charge_attempts')
    op.drop_table('charge_attempts')
    op.drop_index('ix_case_actions_workflow_id', table_name='case_actions')
    op.drop_table('case_actions')
    op.drop_index('ix_delivery_attempts_delivery_id', table_name='delivery_attempts')
    op.drop_table('delivery_attempts')
    op.drop_index('ix_event_deliveries_endpoint_status', table_name='event_deliveries')
    op.drop_index('ix_event_deliveries_event_seq', table_name='event_deliveries')
    op.drop_table('event_deliveries')
    op.drop_index('ix_outbox_events_case_id', table_name='outbox_events')
    op.drop_index('ix_outbox_events_account_seq', table_name='outbox_events')
    op.drop_table('outbox_events')
    op.drop_index('ix_webhook_endpoints_account_id', table_name='webhook_endpoints')
    op.drop_table('webhook_endpoints')
