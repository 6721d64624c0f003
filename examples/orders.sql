-- A table of your own, then an event published inside the transaction that changes it:
-- the event is delivered if and only if the transaction commits.
CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, status text NOT NULL);
INSERT INTO orders VALUES (42, 'paid') ON CONFLICT (id) DO UPDATE SET status = 'paid';

BEGIN;
UPDATE orders SET status = 'shipped' WHERE id = 42;
SELECT pgcast.publish('orders.shipped', '{"id": 42}'::jsonb);
COMMIT;
