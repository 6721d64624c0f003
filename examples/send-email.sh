#!/bin/sh
# The command of `pgcast queue work emails -- examples/send-email.sh`: the message arrives
# as JSON on stdin. Exit 0 acks it; any other status nacks it, to be retried later.
python3 -c '
import json, sys
message = json.load(sys.stdin)
print("sending message", message["id"], "attempt", message["attempt"], "to", message["data"]["to"])
'
