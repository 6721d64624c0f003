"""The sequencer's returned events stay within a byte budget while it holds the lock.

`pgcast.sequence_returning(batch)` (migration 0009) sent every stamped row back before its
commit, so the position lock, which every publisher of every process waits for, was held
while up to `batch` events of up to `MAX_EVENT_BYTES` each went to the client: 1,000
events of 50 KB held it for 150 ms. It is replaced by `sequence_returning(batch, budget)`,
which stamps the same rows but returns them only while their stored sizes add up to
`budget` bytes (always the first one), and tells on every row how many it stamped, so the
caller has the rest read after the commit.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DROP FUNCTION pgcast.sequence_returning(integer)")
    op.execute(
        """
        CREATE FUNCTION pgcast.sequence_returning(batch integer, budget bigint)
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
                PERFORM pg_notify('pgcast_events', head::text);
            END IF;
        END $$;
        """
    )
