"""Fréchet distance between Gaussians fitted to features (FID when the features are Inception's).

    d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})

(Heusel et al. 2017, eq. 6; Dowson & Landau 1982).

Statistics are float64; the matrix square root follows pytorch-fid's ``calculate_frechet_distance``
numerical safeguards exactly.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

from ..errors import DdpmkitError


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof=1, as pytorch-fid's ``np.cov(rowvar=False)``) in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise DdpmkitError(f"need at least 2 feature vectors of shape (N, D), got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrtm(S1 S2)``, safeguarded as pytorch-fid does.

    If ``sqrtm(S1 S2)`` is not finite (singular product), retry with ``(S1 + eps I)(S2 + eps I)``; if the
    result is complex with an imaginary diagonal component above 1e-3 raise, else keep the real part.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise DdpmkitError(f"feature statistics differ in shape: {mu1.shape} vs {mu2.shape}; same extractor?")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are handled below (pytorch-fid passes disp=False)
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():  # as pytorch-fid: offset the diagonals
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):  # as pytorch-fid
            raise DdpmkitError(
                f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag)):.3g} in sqrtm; "
                "use more samples than feature dimensions"
            )
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))
