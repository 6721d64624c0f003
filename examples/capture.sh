# Stream changes of your own table (run orders.sql first): db.public.orders events
# for every INSERT, UPDATE, DELETE and TRUNCATE.
pgcast capture add public.orders
pgcast db shell -c "UPDATE orders SET status = 'delivered' WHERE id = 42"
pgcast tail db.public.orders --from earliest --limit 1 | jq -c .data.changed
