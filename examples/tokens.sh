# One token per role, signed with the server's AUTH_SECRET (set it in this shell too).
# Each line prints a JWT; hand it over as `Authorization: Bearer ...` or PGCAST_TOKEN.
pgcast token create --sub shop --publish 'orders.>' --publish emails --ttl 30d  # publisher, producer
pgcast token create --sub dashboard --subscribe 'orders.>' --ttl 8h            # subscriber
pgcast token create --sub mailer --consume emails --ttl 30d                    # queue worker
pgcast token create --sub ops --admin --subscribe '>' --ttl 1h                 # admin
