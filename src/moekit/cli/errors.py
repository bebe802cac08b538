"""The one exception type a subcommand raises for a mistake the user can fix."""


class CLIError(Exception):
    """A user-facing error: printed as ``moekit: error: <message>`` with exit status 2, no traceback."""
