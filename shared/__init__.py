"""The contract between the featurizer and the trainer: config, store schema, reader.

The reader (and with it zarr) is imported on first use, so ``soundception --help`` and a dask
worker's start do not pay for zarr until they open a store.
"""

from soundception.shared.config import FeaturizerConfig, config_differences, config_hash

__all__ = ["FeaturizerConfig", "FeatureStore", "StoreError", "config_differences", "config_hash"]


def __getattr__(name: str):
    if name in ("FeatureStore", "StoreError"):
        from soundception.shared import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'shared' has no attribute {name!r}")
