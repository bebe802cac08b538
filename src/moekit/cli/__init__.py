"""The ``moekit`` command: one module per subcommand, wired together in :mod:`moekit.cli.main`."""
