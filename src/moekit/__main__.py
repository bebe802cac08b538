"""``python -m moekit`` runs the ``moekit`` command."""

from moekit.cli.main import main

raise SystemExit(main())
