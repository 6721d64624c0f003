#!/bin/sh
# The command of `pgcast queue work emails -- examples/send-email.sh`: the message arrives
# as JSON on stdin. Exit 0 acks it; any other status nacks it, to be retried later.
# Commands running side by side share the worker's stdout, so each line is one write.
python3 -c '
import json, sys
message = json.load(sys.stdin)
to = message["data"]["to"]
sys.stdout.write("sending message %s attempt %s to %s\n" % (message["id"], message["attempt"], to))
'
