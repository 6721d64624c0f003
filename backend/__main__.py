"""`python -m backend` is the `pgcast` command."""

from backend.interface.cli import main

main()
