"""Novelty: autoencoder scores rank the unknown above the known, calibrated p-values, budgets, persistence."""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from scipy import stats
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from policies.selection.autoencoders import ConvAutoencoder, architecture_for, build_autoencoder
from policies.base import Decision
from policies.selection import (
    Budget,
    DetectorOptions,
    NoveltyDetector,
    NoveltySelector,
    SelectionError,
    select,
)

CHANNELS = np.linspace(0.0, 1.0, 32)
FAST = dict(epochs=40, patience=10)


def spectra(n: int, rng: np.random.Generator, peaks: tuple[float, ...] = (0.3, 0.6)) -> np.ndarray:
    """Synthetic spectra (n, 32): Gaussian lines at `peaks` with random heights, plus noise."""
    heights = rng.uniform(0.5, 2.0, (n, len(peaks)))
    lines = np.stack([np.exp(-((CHANNELS - c) ** 2) / (2 * 0.04**2)) for c in peaks])
    return (heights @ lines + rng.normal(0.0, 0.05, (n, len(CHANNELS)))).astype(np.float32)


def novel_spectra(n: int, rng: np.random.Generator) -> np.ndarray:
    return spectra(n, rng, peaks=(0.3, 0.6, 0.85))


@pytest.fixture(scope="module")
def detector() -> NoveltyDetector:
    return NoveltyDetector(DetectorOptions(**FAST), seed=0).fit(spectra(600, np.random.default_rng(0)))


def selector_options(**kw) -> NoveltySelector.Options:
    base = dict(epochs=30, patience=10, warmup=10, background=False, retrain_every=0, device="cpu")
    base.update(kw)
    return NoveltySelector.Options(**base)


# ------------------------------------------------------------------ scores
def test_model_trained_on_one_digit_ranks_another_as_more_novel():
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    zeros = rng.permutation(np.flatnonzero(y == 0))
    det = NoveltyDetector(DetectorOptions(epochs=60, patience=15), seed=0).fit(X[zeros[:120]])
    held_out, ones = X[zeros[120:]], X[y == 1]
    s = det.score(np.concatenate([held_out, ones]))
    auroc = roc_auc_score(np.r_[np.zeros(len(held_out)), np.ones(len(ones))], s)
    assert auroc > 0.9


def test_spectra_with_an_unseen_line_score_higher_and_get_small_pvalues(detector):
    rng = np.random.default_rng(1)
    known, novel = spectra(200, rng), novel_spectra(200, rng)
    s = detector.score(np.concatenate([known, novel]))
    assert roc_auc_score(np.r_[np.zeros(200), np.ones(200)], s) > 0.95
    assert np.median(detector.pvalues(s[200:])) < 0.05


def test_pvalues_are_uniform_on_held_out_known_data():
    rng = np.random.default_rng(2)
    det = NoveltyDetector(DetectorOptions(calibration_fraction=0.5, **FAST), seed=3).fit(spectra(4000, rng))
    assert len(det.calibration) == 2000
    p = det.pvalues(det.score(spectra(500, rng)))
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert p.min() >= 1 / (len(det.calibration) + 1)


def test_pvalue_is_the_conformal_formula_and_threshold_agrees(detector):
    calib = detector.calibration
    s = np.quantile(calib, [0.1, 0.5, 0.97, 0.999])
    expected = [(1 + np.sum(calib >= v)) / (len(calib) + 1) for v in s]
    np.testing.assert_allclose(detector.pvalues(s), expected)
    t = detector.threshold(0.05)
    assert detector.pvalues(np.array([t]))[0] >= 0.05
    assert detector.pvalues(np.array([np.nextafter(t, np.inf)]))[0] < 0.05


def test_nan_data_scores_as_most_novel(detector):
    x = spectra(2, np.random.default_rng(3))
    x[1, 4] = np.nan
    s = detector.score(x)
    assert np.isfinite(s[0]) and s[1] == np.inf
    assert detector.pvalues(s)[1] == pytest.approx(1 / (len(detector.calibration) + 1))


def test_detector_checkpoint_round_trip_gives_identical_scores(detector):
    x = spectra(50, np.random.default_rng(4))
    again, extra = NoveltyDetector.from_bytes(detector.to_bytes(extra={"k": 1}))
    assert extra == {"k": 1}
    np.testing.assert_array_equal(again.score(x), detector.score(x))
    np.testing.assert_array_equal(again.calibration, detector.calibration)


def test_training_progress_logs_rate_and_eta(caplog):
    with caplog.at_level(logging.INFO, logger="policies.selection.training"):
        NoveltyDetector(DetectorOptions(epochs=3, progress="log"), seed=0).fit(spectra(40, np.random.default_rng(5)))
    assert any("epochs/s" in r.getMessage() for r in caplog.records)


def test_convolutional_autoencoder_for_image_cutouts_keeps_their_shape():
    arch = architecture_for((64, 64), latent=8)
    assert arch.kind == "conv"
    assert architecture_for((256,)).kind == "mlp" and architecture_for((4, 8)).kind == "mlp"
    for shape in [(64, 64), (3, 20, 30)]:
        model = build_autoencoder(architecture_for(shape), seed=0)
        assert isinstance(model, ConvAutoencoder)
        recon, z = model(torch.zeros(2, *shape))
        assert recon.shape == (2, *shape) and z.shape[0] == 2
    images = np.random.default_rng(6).normal(size=(40, 32, 32)).astype(np.float32)
    det = NoveltyDetector(DetectorOptions(epochs=2), seed=0).fit(images)
    assert det.score(images[:5]).shape == (5,)


def test_shapes_that_do_not_match_and_empty_known_sets_are_selection_errors(detector):
    with pytest.raises(SelectionError, match="empty"):
        NoveltyDetector().fit(np.zeros((0, 5)))
    with pytest.raises(SelectionError, match=r"\(16,\).*\(32,\)"):
        detector.score(np.zeros((3, 16)))
    with pytest.raises(SelectionError, match="empty"):
        NoveltySelector(selector_options(), seed=0, reference=np.zeros((0, 32)))
    sel = NoveltySelector(selector_options(), seed=0, reference=spectra(30, np.random.default_rng(7)))
    with pytest.raises(SelectionError, match=r"trial 5.*\(8,\).*reference.*\(32,\)"):
        sel.decide(5, np.zeros(8), {})
    sel.close()
    assert issubclass(SelectionError, ValueError)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_scores_match_cpu_scores(detector):
    x = spectra(5000, np.random.default_rng(8))
    gpu, _ = NoveltyDetector.from_bytes(detector.to_bytes(), device="cuda")
    gpu.options.score_batch = 1024
    np.testing.assert_allclose(gpu.score(x), detector.score(x), rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------ offline selection
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 300),
    fraction=st.one_of(st.none(), st.floats(0.0, 1.0)),
    budget_bytes=st.one_of(st.none(), st.integers(0, 20_000)),
    sample_rate=st.floats(0.0, 1.0),
    level=st.floats(0.001, 0.999),
    seed=st.integers(0, 2**16),
)
def test_select_never_exceeds_the_budget(n, fraction, budget_bytes, sample_rate, level, seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(size=n) ** 3
    sizes = rng.integers(1, 400, size=n)
    strata = rng.integers(0, 4, size=n)
    keep = select(p, Budget(fraction=fraction, bytes=budget_bytes), level=level, nbytes=sizes, strata=strata,
                  sample_rate=sample_rate, seed=seed)
    assert keep.dtype == bool and keep.shape == (n,)
    if fraction is not None:
        assert keep.sum() <= math.floor(fraction * n + 1e-9)
    if budget_bytes is not None:
        assert sizes[keep].sum() <= budget_bytes
    if fraction is None and budget_bytes is None:
        assert keep[p < level].all()


def test_select_keeps_the_most_novel_first_then_a_stratified_sample():
    p = np.full(1000, 0.5)
    p[[3, 7, 11]] = [0.01, 0.001, 0.02]
    keep = select(p, Budget(fraction=0.002), level=0.05)  # room for 2 of the 3 novel
    assert set(np.flatnonzero(keep)) == {3, 7}
    strata = np.r_[np.zeros(900, int), np.ones(100, int)]
    keep = select(p, Budget(fraction=1.0), level=0.05, strata=strata, sample_rate=0.1, seed=1)
    assert keep[[3, 7, 11]].all()
    assert 3 + 89 <= keep[:900].sum() <= 3 + 90 and 10 <= keep[900:].sum() <= 11  # 3 novel + 10% of 897
    with pytest.raises(SelectionError, match="nbytes"):
        select(p, Budget(bytes=100))


# ------------------------------------------------------------------ online selection
def test_warm_up_keeps_every_data_product_then_a_model_is_trained():
    rng = np.random.default_rng(9)
    sel = NoveltySelector(selector_options(warmup=12), seed=0)
    decisions = [sel.decide(i, x, {}) for i, x in enumerate(spectra(12, rng))]
    assert all(d.keep and d.reason == "warm-up" and d.novelty is None for d in decisions)
    assert sel.model is not None  # trained on the 12 (background=False)
    blob = sel.state_bytes()
    assert blob is not None and sel.state_bytes() is None
    d = sel.decide(12, spectra(1, rng)[0], {})
    assert d.novelty is not None and d.pvalue is not None and d.reason != "warm-up"
    assert sel.decide(13, None, {}).keep is False
    sel.close()


def test_decide_does_not_wait_for_a_background_training_before_it_is_due():
    rng = np.random.default_rng(10)
    sel = NoveltySelector(selector_options(warmup=10, background=True, wait_first=False, epochs=200, patience=200), seed=0)
    for i, x in enumerate(spectra(10, rng)):
        sel.decide(i, x, {})
    t = time.perf_counter()
    d = sel.decide(10, spectra(1, rng)[0], {})
    assert time.perf_counter() - t < 0.5
    assert d.reason in ("no model yet", "budget exhausted (no model yet)")
    sel.close()  # stops the trainer after its current epoch
    assert sel.wait(timeout=10)


def test_the_first_model_is_trained_in_the_loop_and_retraining_in_the_background():
    rng = np.random.default_rng(12)
    sel = NoveltySelector(selector_options(warmup=10, retrain_every=5, background=True, epochs=200, patience=200), seed=0)
    for i, x in enumerate(spectra(10, rng)):
        sel.decide(i, x, {})
    assert sel.model is not None  # trained inside the 10th decision
    first = sel.model
    decisions = [sel.decide(10 + i, x, {}) for i, x in enumerate(spectra(5, rng))]
    assert all(d.novelty is not None and d.pvalue is not None for d in decisions)
    t = time.perf_counter()
    sel.decide(15, spectra(1, rng)[0], {})  # a retrain is running now
    assert time.perf_counter() - t < 0.5
    assert sel.wait(timeout=60)
    assert sel.model is not first
    sel.close()


def test_novel_measurements_are_kept_and_known_ones_mostly_dropped(detector):
    rng = np.random.default_rng(11)
    sel = NoveltySelector(selector_options(keep_fraction=0.2, sample_rate=0.0), seed=0)
    sel.load_state_bytes(detector.to_bytes())
    stream = np.concatenate([spectra(100, rng), novel_spectra(5, rng)])
    decisions = [sel.decide(i, x, {}) for i, x in enumerate(stream)]
    assert all(d.keep for d in decisions[100:])
    assert all(d.reason.startswith("novel p=") for d in decisions[100:])
    assert sum(d.keep for d in decisions[:100]) <= 10
    assert np.mean([d.novelty for d in decisions[100:]]) > np.mean([d.novelty for d in decisions[:100]])


@pytest.fixture(scope="module")
def blob(detector) -> bytes:
    return detector.to_bytes()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    novel=st.lists(st.booleans(), min_size=1, max_size=60),
    keep_fraction=st.floats(0.01, 1.0),
    budget_bytes=st.one_of(st.none(), st.integers(1, 4000)),
    sample_rate=st.floats(0.0, 0.5),
    seed=st.integers(0, 1000),
)
def test_online_budget_is_never_exceeded(blob, novel, keep_fraction, budget_bytes, sample_rate, seed):
    rng = np.random.default_rng(seed)
    sel = NoveltySelector(selector_options(keep_fraction=keep_fraction, budget_bytes=budget_bytes,
                                           sample_rate=sample_rate), seed=seed)
    sel.load_state_bytes(blob)
    kept = kept_bytes = 0
    for i, is_novel in enumerate(novel):
        x = (novel_spectra if is_novel else spectra)(1, rng)[0]
        d = sel.decide(i, x, {})
        if d.keep:
            kept, kept_bytes = kept + 1, kept_bytes + x.nbytes
        assert kept <= math.floor(keep_fraction * (i + 1) + 1e-9)
        assert budget_bytes is None or kept_bytes <= budget_bytes
        assert d.keep or d.reason in ("known",) or d.reason.startswith("budget exhausted")
    sel.close()


def test_selector_checkpoint_round_trip_gives_identical_scores():
    rng = np.random.default_rng(12)
    sel = NoveltySelector(selector_options(), seed=0)
    for i, x in enumerate(spectra(10, rng)):
        sel.decide(i, x, {})
    blob = sel.state_bytes()
    other = NoveltySelector(selector_options(), seed=5)
    other.load_state_bytes(blob)
    x = spectra(20, rng)
    np.testing.assert_array_equal(other.model.score(x), sel.model.score(x))
    assert other.state_bytes() is None  # a loaded model is not news
    sel.close(), other.close()


def test_restore_continues_budgets_and_calibration_without_rescoring(detector):
    rng = np.random.default_rng(13)
    stream = np.concatenate([spectra(40, rng), novel_spectra(30, rng), spectra(10, rng), novel_spectra(20, rng)])
    opts = selector_options(keep_fraction=0.25, sample_rate=0.0)
    whole = NoveltySelector(opts, seed=0)
    whole.load_state_bytes(detector.to_bytes())
    blob = whole.state_bytes() or detector.to_bytes()
    expected = [whole.decide(i, x, {}) for i, x in enumerate(stream)]
    assert any(d.reason.startswith("budget exhausted") for d in expected)

    first = NoveltySelector(opts, seed=0)
    first.load_state_bytes(blob)
    journal = [first.decide(i, x, {}) for i, x in enumerate(stream[:60])]
    kept_data = [x for d, x in zip(journal, stream[:60]) if d.keep]
    first.close()  # the crash

    resumed = NoveltySelector(opts, seed=0)
    resumed.load_state_bytes(blob)
    resumed.restore(journal, kept_data)
    rest = [resumed.decide(i, x, {}) for i, x in enumerate(stream[60:], start=60)]
    assert [(d.keep, d.reason) for d in journal + rest] == [(d.keep, d.reason) for d in expected]
    np.testing.assert_allclose([d.pvalue for d in rest], [d.pvalue for d in expected[60:]])
    whole.close(), resumed.close()


def test_restore_without_a_checkpoint_retrains_on_the_kept_data():
    rng = np.random.default_rng(14)
    data = spectra(12, rng)
    journal = [Decision(novelty=None, keep=True, reason="warm-up") for _ in data]
    sel = NoveltySelector(selector_options(warmup=12), seed=0)
    sel.restore(journal, list(data))
    assert sel.model is not None
    d = sel.decide(12, spectra(1, rng)[0], {})
    assert d.novelty is not None
    sel.close()


def test_selection_options_reject_unknown_keys():
    with pytest.raises(ValidationError):
        NoveltySelector.Options(kind="autoencoder", keep_fractoin=0.2)
    opts = NoveltySelector.Options.model_validate({"kind": "autoencoder", "keep_fraction": 0.2, "warmup": 30})
    assert opts.keep_fraction == 0.2 and opts.level == 0.05 and opts.sample_rate == 0.02
