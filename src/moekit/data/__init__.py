"""Small datasets for the demos and tests, all offline, all deterministic with a seed.

- :mod:`moekit.data.text`: bundled King James Bible extract, a character tokenizer, LM batches
  (needs torch for the batch tensors only).
- :mod:`moekit.data.tabular`: scikit-learn's bundled diabetes table.
- :mod:`moekit.data.vision`: scikit-learn's 8x8 handwritten digits.
- :mod:`moekit.data.audio`: synthetic sound clips turned into log-mel features.
- :mod:`moekit.data.synthetic`: 2-D toy problems with known regions.

Importing this package imports nothing heavy; import the submodule you need.
"""
