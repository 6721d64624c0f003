"""Sequencing and reading back a publish in one round trip.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One sequencer batch, then the caller's rows as delivered, in one statement: a publisher
    # whose rows are committed pays one round trip instead of two. A row comes back without
    # a position only when a full batch of older rows was stamped first; the caller repeats.
    op.execute(
        """
        CREATE FUNCTION pgcast.sequence_and_read(seqs bigint[], batch integer DEFAULT 10000)
        RETURNS TABLE (
            pos bigint, topic text, type text, key text, data_json text,
            created_at timestamptz, stamped bigint
        )
        LANGUAGE plpgsql AS $$
        DECLARE
            done bigint := pgcast.sequence_pending(batch);
        BEGIN
            RETURN QUERY
                SELECT e.pos, e.topic, e.type, e.key, e.data::text, e.created_at, done
                  FROM pgcast.events e
                 WHERE e.seq = ANY(seqs)
                 ORDER BY e.pos NULLS LAST, e.seq;
        END $$;
        """
    )
