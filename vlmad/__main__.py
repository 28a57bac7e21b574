"""``python -m vlmad`` runs the ``vlmad`` command."""

from vlmad.cli import main

main()
