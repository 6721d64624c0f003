"""The WebSocket transport: many subscriptions and publishes over one socket (`pgcast.v1`).

`endpoint` accepts or refuses the handshake and runs the receive loop; `connection` owns
the socket once open (send lock, frame writing, watchdog, close); `ops` is the table of
client ops; `runners` are the tasks behind `subscribe` and `consume`; `frames` parses and
checks client frames. The protocol is in docs/protocol.md.
"""
