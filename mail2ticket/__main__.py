"""Entry point for ``python -m mail2ticket``."""

from mail2ticket.cli import main

if __name__ == "__main__":
    main()
