"""``python -m datakit.cli``: the same as the ``datakit`` command."""

from datakit.cli import main

raise SystemExit(main())
