"""Novelty selection is reproducible (decisions do not depend on thread timing) and its p-values stay calibrated."""
from __future__ import annotations

import time

import numpy as np

from policies.selection import NoveltyDetector, NoveltySelector
from tests.test_novelty import novel_spectra, selector_options, spectra


def _decisions(stream: np.ndarray, pause: float) -> list[tuple]:
    """Decisions of a selector retraining in the background; `pause` seconds after each changes only the timing."""
    sel = NoveltySelector(selector_options(warmup=10, retrain_every=8, background=True, epochs=40, patience=40), seed=3)
    out = []
    for i, x in enumerate(stream):
        d = sel.decide(i, x, {})
        out.append((d.keep, d.reason, d.novelty, d.pvalue))
        time.sleep(pause)
    sel.close()
    return out


def test_same_seed_and_sequence_give_the_same_decisions_whatever_the_trainer_timing():
    rng = np.random.default_rng(21)
    stream = np.concatenate([spectra(30, rng), novel_spectra(4, rng), spectra(16, rng)])
    fast, slow = _decisions(stream, 0.0), _decisions(stream, 0.02)
    assert sum(d[2] is not None for d in fast) == len(stream) - 10  # every measurement after warm-up is scored
    assert fast == slow


def test_a_retrain_started_after_measurement_k_scores_from_measurement_k_plus_lag_plus_1():
    rng = np.random.default_rng(23)
    sel = NoveltySelector(selector_options(warmup=10, retrain_every=5, retrain_lag=3, background=True), seed=0)
    blobs = []
    for i, x in enumerate(spectra(25, rng)):
        sel.decide(i, x, {})
        blobs.append(sel.state_bytes())  # as the campaign checkpoints, after each decision
    sel.close()
    # the first model is trained in the loop after measurement 10; retrains start after 15 and 20
    assert [i + 1 for i, b in enumerate(blobs) if b is not None] == [10, 19, 24]
    assert NoveltyDetector.from_bytes(blobs[18])[1] == {"installed_at": 18, "trained_at": 15, "generation": 2}


def test_false_novel_rate_stays_at_the_level_over_3000_in_distribution_measurements():
    """Online conformal p-values of exchangeable scores are independent and super-uniform, so the count of
    p < 0.05 is a sum of independent Bernoulli(<= 0.05) (Vovk et al. 2005, sec. 8.7): sd 0.4% over 3000;
    +-1.5% is 3.8 sd. Self-selected calibration (only scores with p >= level) drifts to 10-18%."""
    rng = np.random.default_rng(22)
    level = 0.05
    sel = NoveltySelector(selector_options(level=level, keep_fraction=1.0, sample_rate=0.0, epochs=20, patience=5),
                          seed=0, reference=spectra(400, rng))
    p = np.array([sel.decide(i, x, {}).pvalue for i, x in enumerate(spectra(3000, rng))])
    sel.close()
    rate = float(np.mean(p < level))
    assert abs(rate - level) <= 0.015, rate
    assert float(np.mean(p[-1000:] < level)) <= level + 0.025  # no drift late in the stream (3.6 sd over 1000)
