"""Publishing positioned events in one statement: each event written once, one commit.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The server's publishes take the position lock themselves and insert their events with
    # positions, in the statement's own transaction: the lock is held until that commits,
    # so positions still become visible in the order they were given, and nothing waits on
    # anyone else's transaction (SQL publishes inside callers' transactions keep going
    # through the sequencer after they commit). One INSERT per event and one commit per
    # batch, where an INSERT, a commit, an UPDATE of every row and a second commit were.
    op.execute(
        """
        CREATE FUNCTION pgcast.append_positioned(
            topics text[], types text[], keys text[], datas text[]
        )
        RETURNS TABLE (
            pos bigint, topic text, type text, key text, data_json text, created_at timestamptz
        )
        LANGUAGE plpgsql AS $$
        #variable_conflict use_column
        DECLARE
            last bigint;
            head bigint;
        BEGIN
            SELECT s.last_pos INTO last FROM pgcast.log_state s WHERE s.id = 1 FOR UPDATE;
            head := last + cardinality(topics);
            RETURN QUERY
                INSERT INTO pgcast.events AS e (pos, topic, type, key, data)
                SELECT last + u.ord, u.topic, u.type, u.key, u.data::jsonb
                  FROM unnest(topics, types, keys, datas)
                       WITH ORDINALITY AS u(topic, type, key, data, ord)
                 ORDER BY u.ord
                RETURNING e.pos, e.topic, e.type, e.key, e.data::text, e.created_at;
            UPDATE pgcast.log_state SET last_pos = head WHERE id = 1;
            PERFORM pg_notify('pgcast_events', head::text);
        END $$;
        """
    )
