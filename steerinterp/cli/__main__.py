"""``python -m steerinterp.cli``: the same as the ``steerinterp`` command."""

from . import main

main()
