"""locales, tracked links, SMS holdout

Revision ID: 0007_locales
Revises: 0005_security
Create Date: 2026-11-29 08:30:00

Accounts gain a default locale, a tracked-links switch, an SMS holdout share and an SMS A/B test
(template B and its share); customers a locale (BCP 47); cases the experiment arm and SMS
variant they were assigned. SMS templates become per step and
locale, email templates per locale with an optional HTML body (both keep their rows: step 0 and
locale '' are "every step" and "the account's default locale"). `short_links` and `link_clicks`
hold tracked billing links and their clicks.
"""
from alembic import op
import sqlalchemy as sa


revision = '0007_locales'
down_revision = '0005_security'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('locale', sa.String(length=35), nullable=False, server_default='en'))
        batch_op.add_column(sa.Column('track_links', sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column('sms_holdout_percent', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('sms_ab_template', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('sms_ab_percent', sa.Integer(), nullable=True))
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('locale', sa.String(length=35), nullable=True))
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('arm', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('sms_variant', sa.String(length=8), nullable=True))

    op.create_table('sms_templates_l10n',
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('plan', sa.String(length=100), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False, server_default='0'),
    sa.Column('locale', sa.String(length=35), nullable=False, server_default=''),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('account_id', 'plan', 'step', 'locale', name='pk_sms_templates_l10n')
    )
    op.execute(
        "INSERT INTO sms_templates_l10n (account_id, plan, step, locale, body, updated_at) "
        "SELECT account_id, plan, 0, '', body, updated_at FROM sms_templates"
    )
    op.drop_table('sms_templates')
    op.rename_table('sms_templates_l10n', 'sms_templates')

    op.create_table('email_templates_l10n',
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('plan', sa.String(length=100), nullable=False),
    sa.Column('locale', sa.String(length=35), nullable=False, server_default=''),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('html', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('account_id', 'step', 'plan', 'locale', name='pk_email_templates_l10n')
    )
    op.execute(
        "INSERT INTO email_templates_l10n (account_id, step, plan, locale, subject, body, updated_at) "
        "SELECT account_id, step, plan, '', subject, body, updated_at FROM email_templates"
    )
    op.drop_table('email_templates')
    op.rename_table('email_templates_l10n', 'email_templates')

    op.create_table('short_links',
    sa.Column('token', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('workflow_id', sa.String(length=300), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('channel', sa.String(length=8), nullable=False),
    sa.Column('target', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('token'),
    sa.UniqueConstraint('workflow_id', 'step', 'channel', name='uq_short_links_case_step')
    )
    op.create_table('link_clicks',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('token', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('workflow_id', sa.String(length=300), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('channel', sa.String(length=8), nullable=False),
    sa.Column('clicked_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_link_clicks_account', 'link_clicks', ['account_id', 'workflow_id'])


def downgrade() -> None:
    op.drop_index('ix_link_clicks_account', table_name='link_clicks')
    op.drop_table('link_clicks')
    op.drop_table('short_links')
    op.create_table('email_templates_old',
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('plan', sa.String(length=100), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('account_id', 'step', 'plan')
    )
    op.execute(
        "INSERT INTO email_templates_old (account_id, step, plan, subject, body, updated_at) "
        "SELECT account_id, step, plan, subject, body, updated_at FROM email_templates "
        "WHERE locale = ''"
    )
    op.drop_table('email_templates')
    op.rename_table('email_templates_old', 'email_templates')
    op.create_table('sms_templates_old',
    sa.Column('account_id', sa.String(length=128), nullable=False),
    sa.Column('plan', sa.String(length=100), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('account_id', 'plan')
    )
    op.execute(
        "INSERT INTO sms_templates_old (account_id, plan, body, updated_at) "
        "SELECT account_id, plan, body, updated_at FROM sms_templates "
        "WHERE locale = '' AND step = 0"
    )
    op.drop_table('sms_templates')
    op.rename_table('sms_templates_old', 'sms_templates')
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_column('sms_variant')
        batch_op.drop_column('arm')
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_column('locale')
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_column('sms_ab_percent')
        batch_op.drop_column('sms_ab_template')
        batch_op.drop_column('sms_holdout_percent')
        batch_op.drop_column('track_links')
        batch_op.drop_column('locale')
