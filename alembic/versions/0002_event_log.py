"""The event log: append-only events, the post-commit sequencer and SQL publish.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), primary_key=True),
        sa.Column("pos", sa.BigInteger(), nullable=True),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=True),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("data", postgresql.JSONB(), nullable=False),
        sa.Column("headers", postgresql.JSONB(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema="pgcast",
    )
    op.create_index(
        "events_pos_idx",
        "events",
        ["pos"],
        unique=True,
        schema="pgcast",
        postgresql_where=sa.text("pos IS NOT NULL"),
    )
    op.create_index(
        "events_pending_idx",
        "events",
        ["seq"],
        schema="pgcast",
        postgresql_where=sa.text("pos IS NULL"),
    )
    op.create_index(
        "events_topic_pos_idx",
        "events",
        ["topic", "pos"],
        schema="pgcast",
        postgresql_where=sa.text("pos IS NOT NULL"),
    )
    op.create_table(
        "log_state",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("last_pos", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("pruned_through", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column(
            "max_event_bytes", sa.Integer(), nullable=False, server_default=sa.text("1048576")
        ),
        schema="pgcast",
    )
    op.execute("INSERT INTO pgcast.log_state (id) VALUES (1)")

    op.execute(
        r"""
        CREATE FUNCTION pgcast.check_topic(name text) RETURNS void
        LANGUAGE plpgsql IMMUTABLE AS $$
        BEGIN
            IF name IS NULL OR length(name) NOT BETWEEN 1 AND 200
               OR name !~ '^[A-Za-z0-9_:-]+(\.[A-Za-z0-9_:-]+)*$' THEN
                RAISE EXCEPTION 'pgcast: invalid topic %', quote_nullable(name)
                    USING ERRCODE = '22023',
                          HINT = 'Topics are 1-200 characters: dot-separated segments of [A-Za-z0-9_:-].';
            END IF;
        END $$;
        """
    )
    op.execute(
        """
        CREATE FUNCTION pgcast.event_id(pos bigint) RETURNS text
        LANGUAGE sql IMMUTABLE AS $$ SELECT lpad(pos::text, 16, '0') $$;
        """
    )
    op.execute(
        """
        CREATE FUNCTION pgcast.publish(
            topic text, data jsonb, type text DEFAULT NULL, key text DEFAULT NULL
        ) RETURNS text
        LANGUAGE plpgsql AS $$
        DECLARE
            new_seq bigint;
            size_limit integer;
        BEGIN
            PERFORM pgcast.check_topic(topic);
            IF topic = 'pgcast' OR topic LIKE 'pgcast.%' THEN
                RAISE EXCEPTION 'pgcast: topics under ''pgcast.'' are reserved for the server'
                    USING ERRCODE = '22023';
            END IF;
            IF type = 'error' OR type LIKE 'pgcast.%' THEN
                RAISE EXCEPTION 'pgcast: event type % is reserved', quote_literal(type)
                    USING ERRCODE = '22023';
            END IF;
            IF type IS NOT NULL AND (length(type) NOT BETWEEN 1 AND 200 OR type ~ '[[:cntrl:]]') THEN
                RAISE EXCEPTION 'pgcast: event type must be 1-200 characters without control characters'
                    USING ERRCODE = '22023';
            END IF;
            IF data IS NULL THEN
                RAISE EXCEPTION 'pgcast: event data must not be NULL (use ''null''::jsonb)'
                    USING ERRCODE = '22023';
            END IF;
            SELECT max_event_bytes INTO size_limit FROM pgcast.log_state WHERE id = 1;
            IF octet_length(data::text) > size_limit THEN
                RAISE EXCEPTION 'pgcast: event data is % bytes, over the limit of % bytes',
                    octet_length(data::text), size_limit USING ERRCODE = '54000';
            END IF;
            INSERT INTO pgcast.events (topic, type, key, data)
                VALUES (publish.topic, publish.type, publish.key, publish.data)
                RETURNING seq INTO new_seq;
            -- One wake-up per transaction: identical notifications are folded at commit.
            PERFORM pg_notify('pgcast_pending', '');
            RETURN 'r' || new_seq;
        END $$;
        """
    )
    op.execute(
        """
        CREATE FUNCTION pgcast.receipt_event_id(receipt text) RETURNS text
        LANGUAGE sql STABLE AS $$
            SELECT pgcast.event_id(pos) FROM pgcast.events
            WHERE receipt ~ '^r[0-9]{1,18}$' AND seq = substr(receipt, 2)::bigint
        $$;
        """
    )
    op.execute(
        """
        CREATE FUNCTION pgcast.sequence_pending(batch integer DEFAULT 10000) RETURNS bigint
        LANGUAGE plpgsql AS $$
        DECLARE
            last bigint;
            stamped bigint;
        BEGIN
            -- Cheap exit without the lock: a row committed after this check sends its own wake-up.
            IF NOT EXISTS (SELECT 1 FROM pgcast.events WHERE pos IS NULL) THEN
                RETURN 0;
            END IF;
            -- The row lock serializes sequencers across processes; it is held until commit,
            -- so positions become visible in the order they were assigned.
            SELECT last_pos INTO last FROM pgcast.log_state WHERE id = 1 FOR UPDATE;
            UPDATE pgcast.events AS e
               SET pos = last + p.rn
              FROM (SELECT seq, row_number() OVER (ORDER BY seq) AS rn
                      FROM pgcast.events WHERE pos IS NULL ORDER BY seq LIMIT batch) AS p
             WHERE e.seq = p.seq;
            GET DIAGNOSTICS stamped = ROW_COUNT;
            IF stamped > 0 THEN
                UPDATE pgcast.log_state SET last_pos = last + stamped WHERE id = 1;
                PERFORM pg_notify('pgcast_events', (last + stamped)::text);
            END IF;
            RETURN stamped;
        END $$;
        """
    )
