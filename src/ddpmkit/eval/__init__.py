"""Sample quality: Inception FID/KID, MNIST-classifier metrics, reference statistics, sweeps, ``evaluate_run``."""

from .classifier import MnistClassifier, class_histogram, label_accuracy, load_mnist_net
from .evaluate import EvalResult, evaluate_run
from .features import BatchedExtractor, FeatureExtractor
from .fid import fid_from_features, frechet_distance, gaussian_stats
from .images import as_uint8_nhwc
from .inception import DEFAULT_PRECISION, InceptionFeatures, inception_is_cached
from .kid import KIDResult, kid, mmd2_unbiased
from .reference import (
    ReferenceStats,
    reference_split,
    reference_stats,
    reference_stats_with_fallback,
    stats_for_images,
)
from .sweep import default_metrics, run_sweep, score_images, sweep_markdown, write_sweep_report

__all__ = [
    "DEFAULT_PRECISION",
    "BatchedExtractor",
    "EvalResult",
    "FeatureExtractor",
    "InceptionFeatures",
    "KIDResult",
    "MnistClassifier",
    "ReferenceStats",
    "as_uint8_nhwc",
    "class_histogram",
    "default_metrics",
    "evaluate_run",
    "fid_from_features",
    "frechet_distance",
    "gaussian_stats",
    "inception_is_cached",
    "kid",
    "label_accuracy",
    "load_mnist_net",
    "mmd2_unbiased",
    "reference_split",
    "reference_stats",
    "reference_stats_with_fallback",
    "run_sweep",
    "score_images",
    "stats_for_images",
    "sweep_markdown",
    "write_sweep_report",
]
