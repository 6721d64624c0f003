-- A queue message enqueued inside your own transaction (docs/protocol.md §5.13).
BEGIN;
SELECT pgcast.enqueue('emails', '{"to": "bob@example.com"}'::jsonb, max_attempts => 3);
COMMIT;
