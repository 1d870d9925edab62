"""``python -m evosparse`` runs the command line."""

from evosparse.cli import main

raise SystemExit(main())
