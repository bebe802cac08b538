"""Which transformers is installed, and whether moekit's block table was checked against it."""

from __future__ import annotations

import importlib.metadata
import importlib.util

#: transformers releases (major.minor) whose MoE blocks moekit's table was read and tested against.
CHECKED_VERSIONS: tuple[str, ...] = ("5.24",)


def transformers_version() -> str | None:
    """The installed transformers version, or None when it is not installed."""
    if importlib.util.find_spec("transformers") is None:
        return None
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path
        import transformers

        return str(transformers.__version__)


def major_minor(version: str) -> tuple[int, int]:
    parts = version.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def require_transformers(what: str) -> str:
    """The installed version; a clear ImportError when transformers is missing or older than 5."""
    version = transformers_version()
    if version is None:
        raise ImportError(f"{what} needs Hugging Face transformers >= 5: pip install 'transformers>=5'")
    if major_minor(version) < (5, 0):
        raise ImportError(
            f"{what} needs transformers >= 5 (stacked expert tensors, ExpertsInterface); found "
            f"transformers {version}: pip install -U 'transformers>=5'")
    return version


def is_checked(version: str) -> bool:
    """True when moekit's block table was checked against this major.minor release."""
    mm = major_minor(version)
    return any(mm == major_minor(v) for v in CHECKED_VERSIONS)


def unchecked_message(version: str) -> str:
    return (f"transformers {version} is not a release moekit's table of MoE blocks was checked "
            f"against ({', '.join(CHECKED_VERSIONS)}): block code may have changed. patch() "
            "therefore verifies every block it replaces against transformers' own forward on a "
            "probe input, and lists any block that differs in report.unsupported")
