"""``python -m graphopt.cli``: the same as the ``graphopt`` command."""

from graphopt.cli import main

raise SystemExit(main())
