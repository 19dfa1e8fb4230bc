"""security: idempotent top-ups, encrypted Stripe secrets, billing link hosts

Revision ID: 0005_security
Revises: 0003
Create Date: 2026-11-29 08:00:00

`credit_ledger.idempotency_key` with a unique (account_id, idempotency_key) index: a top-up
repeated with the same key (a billing system retrying after a timeout) credits once.
`accounts.stripe_webhook_secret` widens to 512 characters: it holds the secret encrypted
(`dunning stripe reseal` encrypts values stored before). `accounts.billing_link_hosts`: the
hosts an account's billing links may point at (NULL: any https host).
"""
from alembic import op
import sqlalchemy as sa


revision = '0005_security'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.alter_column('stripe_webhook_secret', existing_type=sa.String(length=200),
                              type_=sa.String(length=512), existing_nullable=True)
        batch_op.add_column(sa.Column('billing_link_hosts', sa.String(length=1000),
                                      nullable=True))
    with op.batch_alter_table('credit_ledger', schema=None) as batch_op:
        batch_op.add_column(sa.Column('idempotency_key', sa.String(length=200), nullable=True))
        batch_op.create_index('uq_credit_ledger_idempotency', ['account_id', 'idempotency_key'],
                              unique=True)


def downgrade() -> None:
    with op.batch_alter_table('credit_ledger', schema=None) as batch_op:
        batch_op.drop_index('uq_credit_ledger_idempotency')
        batch_op.drop_column('idempotency_key')
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_column('billing_link_hosts')
        batch_op.alter_column('stripe_webhook_secret', existing_type=sa.String(length=512),
                              type_=sa.String(length=200), existing_nullable=True)
