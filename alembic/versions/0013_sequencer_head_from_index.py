"""The sequencer finds the new head from the top of the position index again.

Migration 0012 had both sequencer functions take the new head as
`max(pos + coalesce(span, 1) - 1)` over the rows above the old head, so that a chunk row
counts all its positions. Unlike `max(pos)`, a maximum of an expression cannot be read
off the end of an index: inside the functions, whose plans are kept for the session,
PostgreSQL planned it as a scan of the whole log, once per run. Every run then cost time
in proportion to the log's size (2.4 ms at 19,000 events), and SQL publishers shared two
cores with it. The head is now read from the row with the highest position, `ORDER BY pos
DESC LIMIT 1`, which the position index answers at once whatever the log's size.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(_SEQUENCE_PENDING)
    op.execute(_SEQUENCE_RETURNING)


_SEQUENCE_PENDING = """
CREATE OR REPLACE FUNCTION pgcast.sequence_pending(batch integer DEFAULT 10000) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    last bigint;
    head bigint;
BEGIN
    -- Cheap exit without the lock: a row committed after this check sends its own wake-up.
    IF NOT EXISTS (SELECT 1 FROM pgcast.events WHERE pos IS NULL) THEN
        RETURN 0;
    END IF;
    -- The row lock serializes sequencers across processes; it is held until commit,
    -- so positions become visible in the order they were assigned. A chunk row of a
    -- captured statement takes as many positions as it holds changes.
    SELECT last_pos INTO last FROM pgcast.log_state WHERE id = 1 FOR UPDATE;
    UPDATE pgcast.events AS e
       SET pos = last + p.upto - p.width + 1
      FROM (SELECT w.seq, coalesce(w.span, 1) AS width,
                   sum(coalesce(w.span, 1)) OVER (ORDER BY w.seq) AS upto
              FROM pgcast.events w WHERE w.pos IS NULL ORDER BY w.seq LIMIT batch) AS p
     WHERE e.seq = p.seq;
    -- The row holding the highest position, found from the top of the position index.
    SELECT e.pos + coalesce(e.span, 1) - 1 INTO head
      FROM pgcast.events e WHERE e.pos > last ORDER BY e.pos DESC LIMIT 1;
    IF head IS NOT NULL THEN
        UPDATE pgcast.log_state SET last_pos = head WHERE id = 1;
        PERFORM pg_notify('pgcast_events', head::text);
        RETURN head - last;
    END IF;
    RETURN 0;
END $$;
"""

_SEQUENCE_RETURNING = """
CREATE OR REPLACE FUNCTION pgcast.sequence_returning(
    batch integer, budget bigint, lease double precision DEFAULT 0
)
RETURNS TABLE (
    pos bigint, topic text, type text, key text, data_json text,
    created_at timestamptz, stamped bigint, head bigint
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    last bigint;
    new_head bigint;
BEGIN
    -- Cheap exit without the lock, as in sequence_pending().
    IF NOT EXISTS (SELECT 1 FROM pgcast.events e WHERE e.pos IS NULL) THEN
        RETURN;
    END IF;
    SELECT s.last_pos INTO last FROM pgcast.log_state s WHERE s.id = 1 FOR UPDATE;
    -- Events are returned up to the first chunk row (its events are read from the log
    -- after the commit) and within the byte budget; a run that stamped positions but
    -- returns no event answers one row without a position.
    RETURN QUERY
        WITH moved AS (
            UPDATE pgcast.events AS e
               SET pos = last + p.upto - p.width + 1
              FROM (SELECT w.seq, coalesce(w.span, 1) AS width,
                           sum(coalesce(w.span, 1)) OVER (ORDER BY w.seq) AS upto
                      FROM pgcast.events w WHERE w.pos IS NULL
                     ORDER BY w.seq LIMIT batch) AS p
             WHERE e.seq = p.seq
            RETURNING e.pos, e.span, e.topic, e.type, e.key, e.data, e.created_at
        ), totals AS (
            SELECT max(m.pos + coalesce(m.span, 1) - 1) AS head,
                   min(m.pos) FILTER (WHERE m.span IS NOT NULL) AS first_chunk
              FROM moved m
        ), sized AS (
            SELECT m.*, sum(pg_column_size(m.data)) OVER (ORDER BY m.pos) AS upto
              FROM moved m
             WHERE m.span IS NULL
        )
        SELECT z.pos, z.topic, z.type, z.key, z.data::text, z.created_at,
               t.head - last, t.head
          FROM totals t
          LEFT JOIN sized z
            ON z.upto - pg_column_size(z.data) < budget
           AND (t.first_chunk IS NULL OR z.pos < t.first_chunk)
         WHERE t.head IS NOT NULL
         ORDER BY z.pos;
    -- Positions are dense and nobody else can stamp while the lock is held.
    SELECT e.pos + coalesce(e.span, 1) - 1 INTO new_head
      FROM pgcast.events e WHERE e.pos > last ORDER BY e.pos DESC LIMIT 1;
    IF new_head IS NOT NULL THEN
        UPDATE pgcast.log_state SET last_pos = new_head WHERE id = 1;
        IF lease > 0 THEN  -- this run's process polls until then
            UPDATE pgcast.sequencer_lease
               SET busy_until = clock_timestamp() + make_interval(secs => lease)
             WHERE id = 1;
        END IF;
        PERFORM pg_notify('pgcast_events', new_head::text);
    END IF;
END $$;
"""
