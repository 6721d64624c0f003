URL=${PGCAST_URL:-http://127.0.0.1:8000}
# enqueue
curl -s -X POST "$URL/queues/emails/messages" \
  -H 'Content-Type: application/json' -d '{"data":{"to":"a@example.com"},"max_attempts":3}'
echo

# claim up to 10, lease 60 s, wait up to 20 s for work
claim=$(curl -s "$URL/queues/emails/messages?limit=10&lease=60&wait=20")

# do the work, then settle each message with the "id" and "lease" of its claim:
# ack when the work succeeded, nack (retried later) when it failed
echo "$claim" | jq -c '.messages[]' | while read -r message; do
  ID=$(echo "$message" | jq -r .id) LEASE=$(echo "$message" | jq -r .lease)
  if echo "$message" | examples/send-email.sh; then
    curl -s -X POST "$URL/queues/emails/messages/$ID/ack" \
      -H 'Content-Type: application/json' -d "{\"lease\":\"$LEASE\"}"
  else
    curl -s -X POST "$URL/queues/emails/messages/$ID/nack" \
      -H 'Content-Type: application/json' -d "{\"lease\":\"$LEASE\",\"error\":\"not sent\"}"
  fi
  echo
done

# inspect and recover
curl -s "$URL/queues/emails"
echo
curl -s "$URL/queues/emails/dead"
echo
curl -s -X POST "$URL/queues/emails/dead/requeue"
echo
