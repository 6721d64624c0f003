"""SQL publishes skip their wake-up while a sequencer is polling a busy log.

Every `pgcast.publish` transaction sent a `pgcast_pending` notification. A notifying commit
takes PostgreSQL's database-wide notification lock and holds it through its WAL flush, and
signals every listening session: concurrent SQL publishers committed one at a time, at
about the rate of a single connection. Once the log is busy, the sequencer does not need
those wake-ups (it runs on a fixed spacing anyway), so it now says so:

- `pgcast.sequencer_lease.busy_until` (one row) is a lease. A sequencer run that stamps
  events and is given `lease` seconds sets it to `clock_timestamp() + lease`; the process
  that ran it keeps polling until then. Runs are serialized by the position lock, so the
  row always holds the lease of the latest such run, whose process is still polling.
- `pgcast.publish` sends its wake-up only when no lease is current. A stale reading (an
  older snapshot) can only show an earlier lease, so it errs towards waking.

The lease has a table of its own: adding a column to `pgcast.log_state` would wait for
every open transaction that has published (they hold a lock on it) while blocking every
publish behind it.

`pgcast.sequence_returning` gains the `lease` argument (default 0: no lease, as before).
The wake-up was never more than that: the log is read by position regardless.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE pgcast.sequencer_lease (id bigint PRIMARY KEY, busy_until timestamptz)"
    )
    op.execute("INSERT INTO pgcast.sequencer_lease (id) VALUES (1)")
    op.execute(
        """
        CREATE OR REPLACE FUNCTION pgcast.publish(
            topic text, data jsonb, type text DEFAULT NULL, key text DEFAULT NULL
        ) RETURNS text
        LANGUAGE plpgsql AS $$
        DECLARE
            new_seq bigint;
            size_limit integer;
            busy_until timestamptz;
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
            SELECT s.max_event_bytes,
                   (SELECT l.busy_until FROM pgcast.sequencer_lease l WHERE l.id = 1)
              INTO size_limit, busy_until
              FROM pgcast.log_state s WHERE s.id = 1;
            IF octet_length(data::text) > size_limit THEN
                RAISE EXCEPTION 'pgcast: event data is % bytes, over the limit of % bytes',
                    octet_length(data::text), size_limit USING ERRCODE = '54000';
            END IF;
            INSERT INTO pgcast.events (topic, type, key, data)
                VALUES (publish.topic, publish.type, publish.key, publish.data)
                RETURNING seq INTO new_seq;
            -- One wake-up per transaction (identical notifications are folded at commit),
            -- and none while a sequencer polls of its own accord.
            IF busy_until IS NULL OR busy_until <= clock_timestamp() THEN
                PERFORM pg_notify('pgcast_pending', '');
            END IF;
            RETURN 'r' || new_seq;
        END $$;
        """
    )
    op.execute("DROP FUNCTION pgcast.sequence_returning(integer, bigint)")
    op.execute(
        """
        CREATE FUNCTION pgcast.sequence_returning(
            batch integer, budget bigint, lease double precision DEFAULT 0
        )
        RETURNS TABLE (
            pos bigint, topic text, type text, key text, data_json text,
            created_at timestamptz, stamped bigint
        )
        LANGUAGE plpgsql AS $$
        #variable_conflict use_column
        DECLARE
            last bigint;
            head bigint;
        BEGIN
            -- Cheap exit without the lock, as in sequence_pending().
            IF NOT EXISTS (SELECT 1 FROM pgcast.events e WHERE e.pos IS NULL) THEN
                RETURN;
            END IF;
            SELECT s.last_pos INTO last FROM pgcast.log_state s WHERE s.id = 1 FOR UPDATE;
            RETURN QUERY
                WITH moved AS (
                    UPDATE pgcast.events AS e
                       SET pos = last + p.rn
                      FROM (SELECT w.seq, row_number() OVER (ORDER BY w.seq) AS rn
                              FROM pgcast.events w WHERE w.pos IS NULL
                             ORDER BY w.seq LIMIT batch) AS p
                     WHERE e.seq = p.seq
                    RETURNING e.pos, e.topic, e.type, e.key, e.data, e.created_at
                ), sized AS (
                    SELECT m.*, count(*) OVER () AS total,
                           sum(pg_column_size(m.data)) OVER (ORDER BY m.pos) AS upto
                      FROM moved m
                )
                SELECT z.pos, z.topic, z.type, z.key, z.data::text, z.created_at, z.total
                  FROM sized z
                 WHERE z.upto - pg_column_size(z.data) < budget
                 ORDER BY z.pos;
            -- Positions are dense and nobody else can stamp while the lock is held.
            SELECT max(e.pos) INTO head FROM pgcast.events e WHERE e.pos > last;
            IF head IS NOT NULL THEN
                UPDATE pgcast.log_state SET last_pos = head WHERE id = 1;
                IF lease > 0 THEN  -- this run's process polls until then
                    UPDATE pgcast.sequencer_lease
                       SET busy_until = clock_timestamp() + make_interval(secs => lease)
                     WHERE id = 1;
                END IF;
                PERFORM pg_notify('pgcast_events', head::text);
            END IF;
        END $$;
        """
    )
