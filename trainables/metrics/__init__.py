"""FID/KID: pure metric math (frechet, kid) and the feature extractors that feed it (features)."""

from trainables.metrics.features import (
    INCEPTION_NAME,
    Extractor,
    ExtractorSpec,
    FIDFallbackWarning,
    InceptionFeatures,
    RandomConvFeatures,
    cache_dir,
    extract,
    extractor_by_name,
    load_extractor,
    proxy_spec,
    standard_extractor_available,
    standard_spec,
)
from trainables.metrics.frechet import feature_stats, frechet_distance
from trainables.metrics.kid import kernel_inception_distance
from trainables.metrics.precision import PRECISIONS, fid_precision

__all__ = [
    "INCEPTION_NAME",
    "Extractor",
    "ExtractorSpec",
    "FIDFallbackWarning",
    "PRECISIONS",
    "InceptionFeatures",
    "RandomConvFeatures",
    "cache_dir",
    "extract",
    "extractor_by_name",
    "feature_stats",
    "fid_precision",
    "frechet_distance",
    "kernel_inception_distance",
    "load_extractor",
    "proxy_spec",
    "standard_extractor_available",
    "standard_spec",
]
