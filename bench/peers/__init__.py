"""pgcast next to the tools a user would pick instead (`python -m bench --peers`).

The peers (Nchan, encode/broadcaster, pgqueuer, procrastinate) run as separate processes
from their own virtualenv or from Debian's nginx; their configurations and small apps sit
in this folder and state what each guarantees (see README.md). Nothing here imports a
peer library: the bench only starts their processes and drives them with the same raw
clients (`bench.wire`) that drive pgcast.
"""
