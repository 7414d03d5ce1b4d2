"""``python -m recops_cli``: the ``recops`` command."""

from recops_cli.app import app

if __name__ == "__main__":
    app()
