"""SQLAlchemy table definitions: the schema Alembic checks the migrations against."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

SCHEMA = "pgcast"

metadata = MetaData(schema=SCHEMA)

events = Table(
    "events",
    metadata,
    Column("seq", BigInteger, Identity(always=True), primary_key=True),
    Column("pos", BigInteger, nullable=True),
    Column("topic", Text, nullable=False),
    Column("type", Text, nullable=True),
    Column("key", Text, nullable=True),
    Column("data", JSONB, nullable=False),
    Column("headers", JSONB, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # A chunk of a captured statement (migration 0012): how many changes, and their rows.
    Column("span", Integer, nullable=True),
    Column("old_rows", ARRAY(Text), nullable=True),
    Column("new_rows", ARRAY(Text), nullable=True),
    Index("events_pos_idx", "pos", unique=True, postgresql_where=text("pos IS NOT NULL")),
    Index("events_pending_idx", "seq", postgresql_where=text("pos IS NULL")),
    Index("events_topic_pos_idx", "topic", "pos", postgresql_where=text("pos IS NOT NULL")),
    CheckConstraint("span BETWEEN 1 AND 10000", name="events_span_check"),
    Index("events_chunk_pos_idx", "pos", postgresql_where=text("span IS NOT NULL")),
    Index("events_chunk_topic_pos_idx", "topic", "pos", postgresql_where=text("span IS NOT NULL")),
)

log_state = Table(
    "log_state",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("last_pos", BigInteger, nullable=False, server_default=text("0")),
    Column("pruned_through", BigInteger, nullable=False, server_default=text("0")),
    Column("max_event_bytes", Integer, nullable=False, server_default=text("1048576")),
)

sequencer_lease = Table(
    "sequencer_lease",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("busy_until", DateTime(timezone=True), nullable=True),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("request_hash", LargeBinary, nullable=False),
    Column("refs", ARRAY(BigInteger), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("scope", "key"),
    Index("idempotency_keys_created_at_idx", "created_at"),
)

queue_messages = Table(
    "queue_messages",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("queue", Text, nullable=False),
    Column("data", JSONB, nullable=False),
    Column("key", Text, nullable=True),
    Column("state", Text, nullable=False, server_default="ready"),
    Column("attempt", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False, server_default=text("5")),
    Column("enqueued_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("available_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("lease_token", Text, nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    CheckConstraint(
        "state IN ('ready', 'leased', 'acked', 'dead')", name="queue_messages_state_check"
    ),
    CheckConstraint("max_attempts >= 1", name="queue_messages_max_attempts_check"),
    Index(
        "queue_messages_ready_idx",
        "queue",
        "available_at",
        "id",
        postgresql_where=text("state = 'ready'"),
    ),
    Index("queue_messages_leased_idx", "lease_until", postgresql_where=text("state = 'leased'")),
    Index("queue_messages_dead_idx", "queue", "id", postgresql_where=text("state = 'dead'")),
    Index("queue_messages_acked_idx", "finished_at", postgresql_where=text("state = 'acked'")),
)
