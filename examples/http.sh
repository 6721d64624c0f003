URL=${PGCAST_URL:-http://127.0.0.1:8000}
curl -s -XPOST "$URL/topics/orders.created/events" \
     -H 'content-type: application/json' -d '{"data": {"id": 42}, "type": "created"}'
echo
# Every retained event of orders.* as Server-Sent Events (--max-time: stop after 2 s).
curl -sN --max-time 2 -H 'Accept: text/event-stream' "$URL/topics/orders.*/events?after=earliest"
# The same with the CLI, one JSON line per event. By default it prints only events
# published after it starts (--from earliest: every retained one); without --limit it
# follows forever.
pgcast tail 'orders.>' --from earliest --limit 1 | jq -c .data
