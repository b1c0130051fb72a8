"""``python -m estim`` is the ``estim`` command."""

from estim.cli import main

main()
