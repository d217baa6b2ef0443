"""FID/KID: pure metric math (frechet, kid) and the feature extractors that feed it (features)."""

from trainables.metrics.features import (
    INCEPTION_NAME,
    Extractor,
    FIDFallbackWarning,
    InceptionFeatures,
    RandomConvFeatures,
    cache_dir,
    extract,
    extractor_by_name,
    load_extractor,
    standard_extractor_available,
)
from trainables.metrics.frechet import feature_stats, frechet_distance
from trainables.metrics.kid import kernel_inception_distance

__all__ = [
    "INCEPTION_NAME",
    "Extractor",
    "FIDFallbackWarning",
    "InceptionFeatures",
    "RandomConvFeatures",
    "cache_dir",
    "extract",
    "extractor_by_name",
    "feature_stats",
    "frechet_distance",
    "kernel_inception_distance",
    "load_extractor",
    "standard_extractor_available",
]
