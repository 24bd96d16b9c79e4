"""``python -m supervisor``: the same as the ``corral`` command."""

from supervisor.cli import main

raise SystemExit(main())
