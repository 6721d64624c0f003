URL=${PGCAST_URL:-http://127.0.0.1:8000}
curl -s -X POST "$URL/topics/orders.created/events" \
  -H 'Content-Type: application/json' -H 'Idempotency-Key: order-42-created' \
  -d '{"data":{"id":42},"type":"created","key":"42"}'
