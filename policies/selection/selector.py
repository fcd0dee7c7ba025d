"""NoveltySelector: the online Selector of a campaign, one measurement at a time, retraining in the background.

Each model takes over at a fixed measurement, so the same measurements give the same decisions.
"""
from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait as wait_futures
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from policies.base import Decision
from policies.selection.detector import MIN_KNOWN, DetectorOptions, NoveltyDetector
from policies.selection.errors import SelectionError
from policies.selection.scores import ScoreKind, as_rows
from policies.selection.training import resolve_device

logger = logging.getLogger(__name__)


@dataclass
class _Training:
    """A model being fitted in a background thread on the known set as it was after measurement `start`."""

    start: int
    stop: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)

    @classmethod
    def launch(cls, fit: Callable[[threading.Event], NoveltyDetector], start: int) -> _Training:
        t = cls(start)

        def run() -> None:
            try:
                t.future.set_result(fit(t.stop))
            except BaseException as exc:  # noqa: BLE001 - raised again where the model is installed
                t.future.set_exception(exc)

        threading.Thread(target=run, name="aec-novelty-trainer", daemon=True).start()
        return t


WARMUP, NO_MODEL, SAMPLE, KNOWN, EXHAUSTED, NO_DATA = (
    "warm-up", "no model yet", "stratified sample", "known", "budget exhausted", "no data product")


class NoveltySelector:
    """Online data selection for a campaign: score each data product, keep the novel, sample the rest.

    Budget, stated exactly: the first `warmup` data products (before any model exists) are kept
    and train the first model; after them, the kept data products number at most
    floor(keep_fraction * data products seen so far, warm-up included) and, with budget_bytes,
    their bytes sum to at most budget_bytes. Novel ones (p < level) come first; a known one is
    kept when its stratum (k-means cluster of latent codes) is due a sample at `sample_rate` and
    the kept stratified samples stay within sample_rate of the measurements after warm-up.
    While the first model is still training after warm-up, data products are kept within half
    of the budget earned so far (reason "no model yet").
    Every data product seen joins the known set (a reservoir of `max_known`), so a retrained
    model learns what has become common.

    Reproducible: a model trained in the background from the known set after measurement k
    scores measurements k + retrain_lag + 1 onwards, exactly (`decide` waits for it there if it
    is late), so the same measurements in the same order give the same decisions, whatever the timing.
    Calibrated: a model's calibration set is a held-out slice of its known set, extended with the
    score of every measurement it scores, whatever the p-value, so the scores stay exchangeable
    and the false-novel rate on known data stays at most `level` (never drifts upwards).
    """

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        kind: Literal["autoencoder"] = "autoencoder"
        keep_fraction: float = Field(0.1, gt=0.0, le=1.0)
        budget_bytes: int | None = Field(None, gt=0)
        level: float = Field(0.05, gt=0.0, lt=1.0)
        warmup: int = Field(20, ge=MIN_KNOWN)
        reference: str | None = None
        retrain_every: int = Field(50, ge=0, description="0: never retrain")
        retrain_lag: int = Field(10, ge=0, description="measurements the old model scores while a new one trains in the background")
        sample_rate: float = Field(0.02, ge=0.0, le=1.0)
        latent: int = Field(8, ge=1)
        hidden: list[int] | None = None
        architecture: Literal["auto", "mlp", "conv"] = "auto"
        score: ScoreKind = "combined"
        epochs: int = Field(200, ge=1)
        patience: int = Field(20, ge=1)
        batch_size: int = Field(128, ge=1)
        learning_rate: float = Field(2e-3, gt=0.0)
        strata: int = Field(8, ge=1)
        max_known: int = Field(20000, ge=MIN_KNOWN)
        background: bool = True
        wait_first: bool = Field(True, description="train the first model in the loop, so every measurement after warm-up is scored")
        progress: bool = False
        device: str = "auto"

    def __init__(self, options: Options, seed: int, reference: np.ndarray | None = None):
        self.options = options
        self.seed = int(seed)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._rng = np.random.default_rng(self.seed)
        self._model: NoveltyDetector | None = None
        self._generation = 0
        self._installed_at = 0  # measurements decided before the model scored its first
        self._trained_at = 0  # measurements in the known set the model was trained on
        self._checkpoint: bytes | None = None  # the newly installed model, as `state_bytes` returns it
        self._pending: _Training | None = None
        self._reference: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None
        self._known: list[np.ndarray] = []
        self._reset_counts()
        resolve_device(options.device)  # a bad device fails now, not in the trainer
        if reference is not None:
            ref = as_rows(reference, "reference data set")
            if len(ref) == 0:
                raise SelectionError("the reference data set is empty: give known measurements, or none")
            if len(ref) < MIN_KNOWN:
                raise SelectionError(f"the reference data set has {len(ref)} rows; at least {MIN_KNOWN} are needed to learn from")
            if len(ref) > options.max_known:
                ref = ref[np.sort(self._rng.choice(len(ref), options.max_known, replace=False))]
            self._reference, self._shape = np.asarray(ref, dtype=np.float32), tuple(ref.shape[1:])
            self._start_training()

    def _reset_counts(self) -> None:
        self._seen = 0  # data products seen
        self._known_seen = 0  # data products offered to the reservoir
        self._kept = 0  # kept after warm-up
        self._kept_bytes = 0
        self._samples = 0  # kept as stratified samples
        self._last_train = 0  # _seen when the last training started
        self._strata_seen: dict[int, int] = {}
        self._strata_offset: dict[int, float] = {}

    # ------------------------------------------------------------------ training
    def _detector_options(self) -> DetectorOptions:
        o = self.options
        return DetectorOptions(latent=o.latent, hidden=tuple(o.hidden) if o.hidden else None, architecture=o.architecture,
                               score=o.score, epochs=o.epochs, batch_size=o.batch_size, learning_rate=o.learning_rate,
                               patience=o.patience, strata=o.strata, device=o.device,
                               progress="log" if o.progress else "off")

    def _start_training(self) -> None:
        """Fit a model on the known set as it is now: in a thread when `background` (except the first with
        `wait_first`), installed `retrain_lag` measurements later by `decide`; else here, installed at once."""
        parts = [] if self._reference is None else [self._reference]
        if self._known:
            parts.append(np.stack(self._known))
        data = np.concatenate(parts) if parts else np.zeros((0, *(self._shape or (1,))), dtype=np.float32)
        self._last_train = self._seen
        self._generation += 1
        options, seed = self._detector_options(), self.seed + 1009 * self._generation

        def fit(stop: threading.Event) -> NoveltyDetector:
            return NoveltyDetector(options, seed=seed).fit(data, stop=stop)

        if self.options.background and not (self._model is None and self.options.wait_first):
            self._pending = _Training.launch(fit, self._seen)
            return
        training = _Training(self._seen)
        try:
            training.future.set_result(fit(self._stop))
        except Exception as exc:  # noqa: BLE001 - logged by _finish
            training.future.set_exception(exc)
        self._finish(training)

    def _finish(self, training: _Training) -> None:
        """Install the model of `training` (waiting for it) to score from the next measurement on."""
        if self._pending is training:
            self._pending = None
        try:
            det = training.future.result()
        except Exception:  # the campaign goes on with the model it has
            logger.exception("novelty: training on the known set after measurement %d failed", training.start)
            return
        if self._stop.is_set() or training.stop.is_set():  # closed, or superseded by a checkpoint
            return
        self._model, self._installed_at, self._trained_at = det, self._seen, training.start
        self._strata_seen, self._strata_offset = {}, {}
        self._checkpoint = det.to_bytes(extra={"installed_at": self._seen, "trained_at": training.start,
                                                "generation": self._generation})
        logger.info("novelty: model %d (known set after measurement %d, %s) scores from measurement %d",
                    self._generation, training.start, det.report.stopped, self._seen + 1)

    def wait(self, timeout: float | None = None) -> bool:
        """Finish a background training and install its model now (tests, offline use); False on timeout."""
        training = self._pending
        if training is not None and not wait_futures([training.future], timeout).done:
            return False
        with self._lock:
            if training is not None and self._pending is training:
                self._finish(training)
        return True

    @property
    def model(self) -> NoveltyDetector | None:
        return self._model

    # ------------------------------------------------------------------ decisions
    def _room(self, nbytes: int, share: float = 1.0) -> bool:
        """Whether one more data product of nbytes fits `share` of the budget earned so far."""
        o = self.options
        if self._kept + 1 > math.floor(share * o.keep_fraction * self._seen + 1e-9):
            return False
        return o.budget_bytes is None or self._kept_bytes + nbytes <= o.budget_bytes

    def _remember(self, x: np.ndarray) -> None:
        """Reservoir sample of every data product seen: the known set of the next training."""
        self._known_seen += 1
        if len(self._known) < self.options.max_known:
            self._known.append(x)
        else:
            j = int(self._rng.integers(self._known_seen))
            if j < self.options.max_known:
                self._known[j] = x

    def _sample_due(self, stratum: int) -> bool:
        """Systematic sampling per stratum at sample_rate, from a random offset."""
        rate = self.options.sample_rate
        seen = self._strata_seen.get(stratum, 0) + 1
        self._strata_seen[stratum] = seen
        u = self._strata_offset.setdefault(stratum, float(self._rng.random()))
        return math.floor(rate * seen + u) > math.floor(rate * (seen - 1) + u)

    def decide(self, trial_id: int, data: np.ndarray | None, metrics: dict[str, float]) -> Decision:
        """Keep or drop one measurement's data product; fast, except when it waits for a late retrain (class docstring)."""
        if data is None:
            return Decision(novelty=None, keep=False, reason=NO_DATA)
        x = np.asarray(data, dtype=np.float32)
        x = x.reshape(1) if x.ndim == 0 else x
        nbytes = int(np.asarray(data).nbytes)
        o = self.options
        with self._lock:
            if self._shape is None:
                self._shape = tuple(x.shape)
            elif tuple(x.shape) != self._shape:
                source = "the reference data set" if self._reference is not None else "earlier data products"
                raise SelectionError(f"trial {trial_id}: data product has shape {tuple(x.shape)}, but {source} "
                                     f"have shape {self._shape}")
            if self._pending is not None and self._seen >= self._pending.start + o.retrain_lag:
                self._finish(self._pending)
            self._seen += 1
            self._remember(x)
            model = self._model
            if model is None:
                decision = self._without_model(nbytes)
            else:
                decision = self._with_model(model, x, nbytes)
            if decision.keep:
                self._kept_bytes += nbytes
                self._kept += decision.reason != WARMUP
            if self._pending is not None:
                due = False
            elif model is None:  # first model (or a retry after a failed training, every `warmup` measurements)
                due = self._seen >= o.warmup and (self._generation == 0 or self._seen - self._last_train >= o.warmup)
            else:
                due = o.retrain_every > 0 and self._seen - self._last_train >= o.retrain_every
            if due:
                self._start_training()
            return decision

    def _without_model(self, nbytes: int) -> Decision:
        if self._seen <= self.options.warmup:
            cap = self.options.budget_bytes
            if cap is not None and self._kept_bytes + nbytes > cap:  # learned from in memory, not written
                return Decision(novelty=None, keep=False, reason=f"{EXHAUSTED} (warm-up)")
            return Decision(novelty=None, keep=True, reason=WARMUP)
        if self._room(nbytes, share=0.5):  # unscored: spend at most half, keep the rest for the novel
            return Decision(novelty=None, keep=True, reason=NO_MODEL)
        return Decision(novelty=None, keep=False, reason=f"{EXHAUSTED} ({NO_MODEL})")

    def _with_model(self, model: NoveltyDetector, x: np.ndarray, nbytes: int) -> Decision:
        o = self.options
        scores, z = model.score_with_latent(x[None])
        s = float(scores[0])
        p = float(model.pvalues(scores)[0])
        # Every score joins the calibration, whatever its p-value: then each new score is exchangeable with
        # the calibration set on known data and p stays valid. Only the known-looking ones would bias it low.
        model.add_calibration(scores)
        if p < o.level:
            if self._room(nbytes):
                return Decision(novelty=s, keep=True, pvalue=p, reason=f"novel p={p:.3g} < {o.level:g}")
            return Decision(novelty=s, keep=False, pvalue=p, reason=f"{EXHAUSTED} (novel p={p:.3g})")
        after_warmup = self._seen - min(self._seen, o.warmup)
        due = self._sample_due(int(model.strata(z)[0]))
        if due and self._samples + 1 <= o.sample_rate * after_warmup + 1 and self._room(nbytes):
            self._samples += 1
            return Decision(novelty=s, keep=True, pvalue=p, reason=SAMPLE)
        return Decision(novelty=s, keep=False, pvalue=p, reason=KNOWN)

    # ------------------------------------------------------------------ persistence
    def state_bytes(self) -> bytes | None:
        """A checkpoint of the model (as installed, before it scored anything) when a new one was installed
        since the last call, else None."""
        with self._lock:
            blob, self._checkpoint = self._checkpoint, None
            return blob

    def load_state_bytes(self, blob: bytes) -> None:
        """Install the model of a checkpoint from `state_bytes` (then `restore` the counts)."""
        det, extra = NoveltyDetector.from_bytes(blob, device=self.options.device)
        with self._lock:
            if self._shape is not None and det.shape != self._shape:
                raise SelectionError(f"the checkpoint's model takes data of shape {det.shape}, this campaign's is {self._shape}")
            if self._pending is not None:  # e.g. the first model on a reference set: the checkpoint is newer
                self._pending.stop.set()
                self._pending = None
            self._shape = det.shape
            self._model, self._checkpoint = det, None
            self._installed_at = int(extra.get("installed_at", 0))
            self._trained_at = int(extra.get("trained_at", self._installed_at))
            self._strata_seen, self._strata_offset = {}, {}
            self._generation = max(self._generation + 1, int(extra.get("generation", 0)))

    def restore(self, decisions: list[Decision], kept_data: Sequence[np.ndarray]) -> None:
        """Continue after a crash from the journal: decisions in trial order, the kept data products in order.

        Counts and budgets continue where they stopped; the known set restarts from the kept data
        (all that is on disk); every score made by the loaded model extends its calibration, as in
        `decide`. Nothing is rescored. Stratum counters restart (the strata of past measurements are
        not journaled); a retrain due at the crash starts after the next decision.
        """
        with self._lock:
            self._reset_counts()
            kept = [d for d in decisions if d.keep and d.reason != NO_DATA]
            sizes = []
            for a in kept_data:  # one read of each kept file: its size, and the known set
                sizes.append(int(np.asarray(a).nbytes))
                x = np.asarray(a, dtype=np.float32)
                if self._shape is None:
                    self._shape = tuple(x.shape)
                if tuple(x.shape) == self._shape:
                    self._remember(x)
            if len(sizes) != len(kept):
                logger.warning("novelty restore: %d kept decisions but %d kept data products; byte counts are estimated",
                               len(kept), len(sizes))
                mean = int(np.mean(sizes)) if sizes else 0
                sizes = (sizes + [mean] * len(kept))[: len(kept)]
            k = 0
            for d in decisions:
                if d.reason == NO_DATA:
                    continue
                self._seen += 1
                if d.keep:
                    self._kept += d.reason != WARMUP
                    self._kept_bytes += sizes[k]
                    k += 1
                    if d.reason == SAMPLE:
                        self._samples += 1
            self._known_seen = max(self._known_seen, self._seen)
            if self._model is not None:
                start = min(self._installed_at, self._seen)
                scored = [d.novelty for d in [d for d in decisions if d.reason != NO_DATA][start:] if d.novelty is not None]
                self._model.add_calibration(np.asarray(scored, dtype=float))
                self._last_train = min(self._trained_at, self._seen)
            elif self._seen >= self.options.warmup and self._known:
                self._start_training()

    def close(self) -> None:
        """Stop the background trainer (it ends after its current epoch) and wait for it."""
        self._stop.set()
        training = self._pending
        if training is not None:
            training.stop.set()
            wait_futures([training.future], timeout=30.0)
