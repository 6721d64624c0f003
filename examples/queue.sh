# Each message goes to one worker, with leases, retries and dead-letter. Ctrl-C stops the
# worker once the running commands have finished.
echo '{"to": "ann@example.com"}' | pgcast queue enqueue emails
pgcast queue work emails --concurrency 4 -- examples/send-email.sh
