#!/bin/sh
# The command of `pgcast queue work emails -- examples/send-email.sh`: the message arrives
# as JSON on stdin. Exit 0 acks it; any other status nacks it, to be retried later.
message=$(cat)
to=$(printf '%s' "$message" | python3 -c 'import json, sys; print(json.load(sys.stdin)["data"]["to"])')
echo "sending message $PGCAST_MESSAGE_ID (attempt $PGCAST_ATTEMPT) to $to"
