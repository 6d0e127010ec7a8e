"""Soundception: bird recordings -> multiscale-spectrogram Zarr store -> attention Inception-v4.

One installed name with three parts and a composition on top:

* :mod:`soundception.shared` - the contract both sides read: the frozen featurizer config, the
  store schema, a reader (imports neither side);
* :mod:`soundception.featurize` - audio to images in a Zarr v3 store, on a dask cluster;
* :mod:`soundception.train` - the attention Inception-v4: training, evaluation, prediction from a store;
* :mod:`soundception.cli` and :mod:`soundception.compose` - the ``soundception`` command and the
  commands that use both sides (predict and explain from audio files).

In the repository the parts are the folders ``shared/``, ``featurize/`` and ``train/``; the
installed package maps them under this name (``package-dir`` in ``pyproject.toml``).
"""
