#!/bin/sh
# A queue command for `pgcast queue work emails -- examples/send-email.sh`.
#
# stdin: one message as JSON (id, queue, data, attempt, lease, ...), then end of file.
# Environment: PGCAST_QUEUE, PGCAST_MESSAGE_ID, PGCAST_ATTEMPT.
# Exit 0 acks the message; any other status nacks it with the end of stderr as the error.
#
# This one only prints what it would send; replace the echo with your real work.
message=$(cat)
echo "send-email: message $PGCAST_MESSAGE_ID (attempt $PGCAST_ATTEMPT): $message"
