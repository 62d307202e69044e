"""``python -m harmoview.cli``: the same as the ``harmoview`` command."""

from harmoview.cli import main

raise SystemExit(main())
