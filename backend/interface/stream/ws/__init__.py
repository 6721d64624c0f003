"""The WebSocket transport: many subscriptions and publishes over one socket (`pgcast.v1`).

`endpoint` accepts or refuses the handshake and runs the receive loop; `connection` owns
the socket once open (turn-taking writes, how it ends); `sweep` is the one task per
process that drops stalled clients and enforces the auth deadline, token expiry and the
shutdown close; `ops` is the table of client ops; `runners` are the tasks behind
`subscribe` and `consume`; `frames` parses and checks client frames. The protocol is in
docs/protocol.md.
"""
