"""Point-to-point queues: messages with leases, retries and dead-letter; SQL enqueue.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "queue_messages",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), primary_key=True),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("data", postgresql.JSONB(), nullable=False),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("state", sa.Text(), nullable=False, server_default="ready"),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("max_attempts", sa.Integer(), nullable=False, server_default=sa.text("5")),
        sa.Column(
            "enqueued_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "available_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("lease_token", sa.Text(), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('ready', 'leased', 'acked', 'dead')", name="queue_messages_state_check"
        ),
        sa.CheckConstraint("max_attempts >= 1", name="queue_messages_max_attempts_check"),
        schema="pgcast",
    )
    op.create_index(
        "queue_messages_ready_idx",
        "queue_messages",
        ["queue", "available_at", "id"],
        schema="pgcast",
        postgresql_where=sa.text("state = 'ready'"),
    )
    op.create_index(
        "queue_messages_leased_idx",
        "queue_messages",
        ["lease_until"],
        schema="pgcast",
        postgresql_where=sa.text("state = 'leased'"),
    )
    op.create_index(
        "queue_messages_dead_idx",
        "queue_messages",
        ["queue", "id"],
        schema="pgcast",
        postgresql_where=sa.text("state = 'dead'"),
    )
    op.create_index(
        "queue_messages_acked_idx",
        "queue_messages",
        ["finished_at"],
        schema="pgcast",
        postgresql_where=sa.text("state = 'acked'"),
    )
    op.execute(
        r"""
        CREATE FUNCTION pgcast.enqueue(
            queue text, data jsonb, delay interval DEFAULT '0', max_attempts integer DEFAULT 5
        ) RETURNS text
        LANGUAGE plpgsql AS $$
        DECLARE
            new_id bigint;
            size_limit integer;
        BEGIN
            IF queue IS NULL OR length(queue) NOT BETWEEN 1 AND 186
               OR queue !~ '^[A-Za-z0-9_:-]+(\.[A-Za-z0-9_:-]+)*$' THEN
                RAISE EXCEPTION 'pgcast: invalid queue name %', quote_nullable(queue)
                    USING ERRCODE = '22023',
                          HINT = 'Queue names are 1-186 characters: dot-separated segments of [A-Za-z0-9_:-].';
            END IF;
            IF data IS NULL THEN
                RAISE EXCEPTION 'pgcast: message data must not be NULL (use ''null''::jsonb)'
                    USING ERRCODE = '22023';
            END IF;
            IF delay IS NULL OR delay < interval '0' THEN
                RAISE EXCEPTION 'pgcast: delay must not be negative' USING ERRCODE = '22023';
            END IF;
            IF max_attempts IS NULL OR max_attempts < 1 THEN
                RAISE EXCEPTION 'pgcast: max_attempts must be at least 1' USING ERRCODE = '22023';
            END IF;
            SELECT max_event_bytes INTO size_limit FROM pgcast.log_state WHERE id = 1;
            IF octet_length(data::text) > size_limit THEN
                RAISE EXCEPTION 'pgcast: message data is % bytes, over the limit of % bytes',
                    octet_length(data::text), size_limit USING ERRCODE = '54000';
            END IF;
            INSERT INTO pgcast.queue_messages (queue, data, available_at, max_attempts)
                VALUES (enqueue.queue, enqueue.data, now() + delay, enqueue.max_attempts)
                RETURNING id INTO new_id;
            PERFORM pg_notify('pgcast_queues', enqueue.queue);
            RETURN new_id::text;
        END $$;
        """
    )
