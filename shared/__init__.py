"""The contract between the featurizer and the trainer: config, store schema, reader."""

from shared.config import FeaturizerConfig, config_differences, config_hash
from shared.reader import FeatureStore, StoreError

__all__ = ["FeaturizerConfig", "FeatureStore", "StoreError", "config_differences", "config_hash"]
