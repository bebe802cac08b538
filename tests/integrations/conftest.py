"""Shared setup of the transformers integration tests (``tiny_models`` importable, quiet logs)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tiny_models

if importlib.util.find_spec("transformers") is not None:
    import transformers

    transformers.logging.set_verbosity_error()
