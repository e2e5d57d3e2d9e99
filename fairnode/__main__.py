"""``python -m fairnode`` runs the command line."""

from fairnode.cli import app

app()
