URL=${PGCAST_URL:-http://127.0.0.1:8000}
# Each stream below is cut after 1 s (--max-time 1); leave that out to follow it.

# follow all order topics from the oldest retained event
curl -sN --max-time 1 -H 'Accept: text/event-stream' \
  "$URL/events?topic=orders.%3E&after=earliest"

# resume after a known id
curl -sN --max-time 1 -H 'Accept: text/event-stream' -H 'Last-Event-ID: 0000000000000001' \
  "$URL/events?topic=orders.%3E"

# only created orders with an id over 40 (filter: type=eq.created&data.id=gt.40)
curl -sN --max-time 1 -H 'Accept: text/event-stream' \
  "$URL/topics/orders.*/events?after=earliest&filter=type%3Deq.created%26data.id%3Dgt.40"

# long-poll in JSON instead of SSE
curl -s "$URL/topics/orders.created/events?after=0000000000000001&limit=100&wait=25"
