"""moekit report (being written)."""

import argparse

from moekit.cli.errors import CLIError

HELP = "(being written)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise CLIError("'moekit report' is not available yet")
