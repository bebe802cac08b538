"""moekit predict (being written)."""

import argparse

from moekit.cli.errors import CLIError

HELP = "(being written)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise CLIError("'moekit predict' is not available yet")
