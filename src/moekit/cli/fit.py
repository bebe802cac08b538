"""moekit fit (being written)."""

import argparse

from moekit.cli.errors import CLIError

HELP = "(being written)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise CLIError("'moekit fit' is not available yet")
