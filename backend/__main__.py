"""`python -m backend` is the `pgcast` command."""

from backend.interface.main import main

main()
