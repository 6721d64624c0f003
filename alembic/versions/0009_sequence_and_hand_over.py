"""The sequencer gets back what it stamped, so its process's hub needs no read for it.

`pgcast.sequence_pending()` stamped positions and returned a count; the hub then read the
same rows back with a query of its own on the `pgcast_events` wake-up. Under a stream of
SQL publishes that read came once per sequencer run and cost as much server and database
time as the stamping. `pgcast.sequence_returning(batch)` does the same stamping under the
same lock, in one transaction, and returns the stamped rows in position order, as the hub
reads them; the server hands them to its hub. `sequence_pending()` stays for bulk
backlogs, whose rows the hub reads in pages as before.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION pgcast.sequence_returning(batch integer)
        RETURNS TABLE (
            pos bigint, topic text, type text, key text, data_json text, created_at timestamptz
        )
        LANGUAGE plpgsql AS $$
        #variable_conflict use_column
        DECLARE
            last bigint;
            stamped bigint;
        BEGIN
            -- Cheap exit without the lock, as in sequence_pending().
            IF NOT EXISTS (SELECT 1 FROM pgcast.events e WHERE e.pos IS NULL) THEN
                RETURN;
            END IF;
            SELECT s.last_pos INTO last FROM pgcast.log_state s WHERE s.id = 1 FOR UPDATE;
            RETURN QUERY
                WITH stamped AS (
                    UPDATE pgcast.events AS e
                       SET pos = last + p.rn
                      FROM (SELECT w.seq, row_number() OVER (ORDER BY w.seq) AS rn
                              FROM pgcast.events w WHERE w.pos IS NULL
                             ORDER BY w.seq LIMIT batch) AS p
                     WHERE e.seq = p.seq
                    RETURNING e.pos, e.topic, e.type, e.key, e.data::text, e.created_at
                )
                SELECT * FROM stamped ORDER BY 1;
            GET DIAGNOSTICS stamped = ROW_COUNT;
            IF stamped > 0 THEN
                UPDATE pgcast.log_state SET last_pos = last + stamped WHERE id = 1;
                PERFORM pg_notify('pgcast_events', (last + stamped)::text);
            END IF;
        END $$;
        """
    )
