"""Sample quality: Inception FID/KID, MNIST-classifier metrics, reference statistics, sweeps."""

from .classifier import MnistClassifier, class_histogram, label_accuracy, load_mnist_net
from .fid import fid_from_features, frechet_distance, gaussian_stats
from .images import as_uint8_nhwc
from .inception import DEFAULT_PRECISION, InceptionFeatures, inception_is_cached
from .kid import KIDResult, kid, mmd2_unbiased
from .reference import ReferenceStats, reference_stats, stats_for_images
from .sweep import default_metrics, run_sweep, score_images, sweep_markdown, write_sweep_report

__all__ = [
    "DEFAULT_PRECISION",
    "InceptionFeatures",
    "KIDResult",
    "MnistClassifier",
    "ReferenceStats",
    "as_uint8_nhwc",
    "class_histogram",
    "default_metrics",
    "fid_from_features",
    "frechet_distance",
    "gaussian_stats",
    "inception_is_cached",
    "kid",
    "label_accuracy",
    "load_mnist_net",
    "mmd2_unbiased",
    "reference_stats",
    "run_sweep",
    "score_images",
    "stats_for_images",
    "sweep_markdown",
    "write_sweep_report",
]
