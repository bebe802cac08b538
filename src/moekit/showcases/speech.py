"""The speech showcase: NOT IMPLEMENTED YET (a placeholder that fails clearly, never fakes).

What it is to do (issue 10): classify spoken digits synthesised in 17 accents of 7 languages
(:func:`moekit.data.speech.load_spoken_digits`, split by held-out voices) with an MoE audio
model (``moekit.models``) beside its dense twin at equal active compute; validation accuracy
on unheard voices (``Evaluation``), a test on real recordings where Debian's
asterisk-core-sounds packages are installed (:func:`moekit.data.speech.load_recorded_digits`;
print the apt-get line when absent), and routing by language and accent (``routing``).
Implement ``run`` following the protocol in :mod:`moekit.showcases` and set
``implemented = True``.
"""

from __future__ import annotations

from pathlib import Path

from moekit.showcases._base import ShowcaseResult
from moekit.showcases._runner import not_implemented


class SpeechShowcase:
    name = "speech"
    description = ("An MoE audio classifier on spoken digits in many languages and accents, "
                   "beside its dense twin: do experts specialise by language or accent?")
    sources = ("espeakng-loader", "asterisk-sounds-en", "asterisk-sounds-es",
               "asterisk-sounds-fr", "asterisk-sounds-it", "asterisk-sounds-ru")
    implemented = False

    def run(self, *, quick: bool, seeds: int | None, device: str,
            output: Path) -> ShowcaseResult:
        raise not_implemented(self.name)


SHOWCASE = SpeechShowcase()
