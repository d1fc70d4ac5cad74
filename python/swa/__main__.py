"""``python -m swa``: the ``swa`` command."""

from ._cli import main

main()
