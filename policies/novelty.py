"""Novelty: learn what is known, score how far new data lie outside it, keep the novel within a budget.

The Selector seam in three pieces that compose:

* `NoveltyDetector.fit(known)` trains an autoencoder (`policies/autoencoders.py`) on part of the
  known data, early-stops on another part and scores a third, held-out part for calibration.
* `NoveltyDetector.score(batch)` gives one score per sample (higher is more novel): by default
  (`score="combined"`) the larger of the reconstruction error and the squared Mahalanobis distance
  of the latent code to the training codes, each in units of its upper tail on known data. The first
  catches shapes the network never learned (a digit of another class, a streak across a
  cutout); the second catches known shapes in unknown amounts (a spectrum dominated by a phase
  that was only ever a trace), which an autoencoder reconstructs well by extrapolating.
  `pvalues(scores)` turns scores into conformal p-values against the held-out known data,
  p = (1 + #{calib >= s}) / (n_calib + 1), so a level means the same on every data set.
* `select(pvalues, budget)` keeps every novel sample (p < level), most novel first, up to a budget
  in samples or bytes, plus a stratified random sample of the rest (strata: k-means clusters in
  latent space) so that the kept set still represents the known domain.

`NoveltySelector` applies the same online, one measurement at a time, in a campaign, retraining
in a background thread as the known set grows; each model takes over at a fixed measurement, so
the same measurements give the same decisions.
"""
from __future__ import annotations

import io
import logging
import math
import threading
from dataclasses import asdict, dataclass, field
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait as wait_futures
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from policies.autoencoders import (
    Architecture,
    Progress,
    RobustScaler,
    SelectionError,
    TrainOptions,
    architecture_for,
    build_autoencoder,
    image_stretch,
    resolve_device,
    train_autoencoder,
)
from policies.base import Decision

logger = logging.getLogger(__name__)

ScoreKind = Literal["reconstruction", "latent", "combined"]
MIN_KNOWN = 8
_CHECKPOINT_VERSION = 1


@dataclass
class DetectorOptions:
    """Network, training and calibration settings of a NoveltyDetector (all have working defaults)."""

    latent: int = 8
    hidden: tuple[int, ...] | None = None
    architecture: str = "auto"
    score: ScoreKind = "combined"
    epochs: int = 200
    batch_size: int = 128
    learning_rate: float = 2e-3
    patience: int = 20
    time_limit: float | None = None
    calibration_fraction: float = 0.25
    validation_fraction: float = 0.1
    max_calibration: int = 20000
    strata: int = 8
    device: str = "auto"
    progress: Progress = "off"
    score_batch: int = 2048
    precision: Literal["fp32", "bf16"] = "fp32"
    threads: int | None = None  # scoring threads; None: 1 for small batches, else torch's setting
    compile: bool = False  # torch.compile the network for scoring (CUDA; worth it for long triage runs)
    image_stretch: bool = True  # images: each in units of its own noise, asinh-compressed (autoencoders.image_stretch)
    reduction: Literal["auto", "mean", "region"] = "auto"  # per-sample error; auto: region for images, else mean


def _as_rows(X: np.ndarray, what: str) -> np.ndarray:
    X = np.asarray(X)
    if X.dtype.kind not in "fiub":
        raise SelectionError(f"{what}: expected numbers, got an array of dtype {X.dtype}")
    if X.ndim == 0:
        raise SelectionError(f"{what}: expected an array with one row per measurement, got a scalar")
    return X[:, None] if X.ndim == 1 else X


def _region_max(err: torch.Tensor, cell: int = 4) -> torch.Tensor:
    """Largest mean squared error over cell x cell regions of each image's error map (b, [C,] H, W) -> (b,).

    Unusual things in a cutout are local (a streak, a cosmic-ray hit); averaged over the whole
    image their error drowns in the noise of the rest.
    """
    maps = err if err.dim() == 4 else err.unsqueeze(1)
    maps = maps.mean(1, keepdim=True)
    k = min(cell, maps.shape[-2], maps.shape[-1])
    return torch.nn.functional.avg_pool2d(maps, k, stride=k, ceil_mode=True).flatten(1).amax(1)


def _float32_rows(X: np.ndarray) -> np.ndarray:
    """A C-contiguous, writable float32 view or copy (torch wants writable arrays; memory maps are not)."""
    A = np.ascontiguousarray(X, dtype=np.float32)
    return A if A.flags.writeable else A.copy()


def _tail_units(values: np.ndarray) -> tuple[float, float]:
    """Median and (95th percentile - median) of a score component on known data: its zero and unit."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return 0.0, 1.0
    med = float(np.median(v))
    spread = float(np.quantile(v, 0.95)) - med
    return med, (spread if spread > 1e-12 else max(abs(med), 1.0))


class NoveltyDetector:
    """An autoencoder of the known data with calibrated novelty scores; see the module docstring.

    After `fit`: `shape` is one sample's shape, `calibration` the sorted held-out scores.
    """

    def __init__(self, options: DetectorOptions | None = None, seed: int = 0):
        self.options = options or DetectorOptions()
        self.seed = int(seed)
        self.device = resolve_device(self.options.device)
        self.model: torch.nn.Module | None = None
        self.arch: Architecture | None = None
        self.scaler: RobustScaler | None = None
        self.calibration = np.zeros(0)
        self.latent_mean = np.zeros(0)
        self.latent_whiten = np.zeros((0, 0))
        self.norms = (0.0, 1.0, 0.0, 1.0)  # median and 95th-percentile spread of each component on known data
        self.centres = np.zeros((0, 0))
        self.report = None

    @property
    def shape(self) -> tuple[int, ...]:
        if self.arch is None:
            raise SelectionError("the novelty model has not been fitted")
        return self.arch.shape

    # ------------------------------------------------------------------ fitting
    def fit(self, known: np.ndarray, calibration: np.ndarray | None = None, stop: threading.Event | None = None) -> NoveltyDetector:
        """Learn `known` (n, *shape); calibrate on `calibration` or, by default, on a held-out part of it."""
        X = _as_rows(known, "known data")
        if len(X) == 0:
            raise SelectionError("the known (reference) data set is empty: nothing to learn what is known from")
        finite = np.isfinite(X.reshape(len(X), -1)).all(axis=1)
        if not finite.all():
            logger.warning("novelty: dropping %d known rows with NaN or inf", int((~finite).sum()))
            X = X[finite]
        o = self.options
        rng = np.random.default_rng(self.seed)
        X = X[rng.permutation(len(X))]
        if calibration is None:
            n_cal = int(min(o.max_calibration, max(1, round(o.calibration_fraction * len(X)))))
            X_cal, X = X[:n_cal], X[n_cal:]
        else:
            X_cal = _as_rows(calibration, "calibration data")
            if X_cal.shape[1:] != X.shape[1:]:
                raise SelectionError(f"calibration rows have shape {X_cal.shape[1:]}, known rows {X.shape[1:]}")
        n_val = max(1, round(o.validation_fraction * len(X)))
        if len(X) - n_val < MIN_KNOWN // 2 or len(X_cal) == 0:
            raise SelectionError(f"need at least {MIN_KNOWN} known measurements to learn from, got {len(X) + len(X_cal)}")
        X_val, X_train = X[:n_val], X[n_val:]

        self.arch = architecture_for(X.shape[1:], o.latent, o.architecture, o.hidden)
        self.latent_whiten = np.zeros((0, 0))  # no distances until the new codes are known
        self.scaler = RobustScaler.fit(self._prepare(X_train))
        self.model = build_autoencoder(self.arch, seed=self.seed).to(self.device)
        train = TrainOptions(epochs=o.epochs, batch_size=o.batch_size, learning_rate=o.learning_rate, patience=o.patience,
                             time_limit=o.time_limit, progress=o.progress, seed=self.seed)
        as_t = lambda A: torch.from_numpy(self.scaler.transform(self._prepare(A)))  # noqa: E731
        self.report = train_autoencoder(self.model, as_t(X_train), as_t(X_val), train, stop=stop)

        _, _, z = self._raw_scores(X_train)
        self.latent_mean = z.mean(0)
        cov = np.atleast_2d(np.cov(z, rowvar=False)) if len(z) > 1 else np.eye(z.shape[1])
        cov = 0.9 * cov + 0.1 * (np.trace(cov) / len(cov) + 1e-6) * np.eye(len(cov))  # shrinkage
        self.latent_whiten = np.linalg.cholesky(np.linalg.inv(cov))
        # `combined` takes the larger of the two components, each in units of its upper tail on the
        # training data: novel data often stand out in only one of them (another digit in the
        # reconstruction, a dim phase in the latent space), and a sum would dilute that one.
        recon, maha, _ = self._raw_scores(X_train, latent=False)
        self.norms = (*_tail_units(recon), *_tail_units(maha))
        self.centres = self._kmeans(z, rng)
        self.calibration = np.sort(self.score(X_cal))
        return self

    def _kmeans(self, z: np.ndarray, rng: np.random.Generator, iterations: int = 25) -> np.ndarray:
        """Centres (k, latent) of k-means on the training latents: the strata of stratified sampling."""
        k = int(max(1, min(self.options.strata, len(z) // 20)))
        if len(z) > 5000:
            z = z[rng.choice(len(z), 5000, replace=False)]
        centres = z[[int(rng.integers(len(z)))]]
        for _ in range(1, k):  # k-means++ seeding
            d = ((z[:, None] - centres[None]) ** 2).sum(-1).min(1)
            centres = np.vstack([centres, z[rng.choice(len(z), p=d / d.sum()) if d.sum() > 0 else 0]])
        for _ in range(iterations):
            labels = ((z[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
            centres = np.array([z[labels == c].mean(0) if (labels == c).any() else centres[c] for c in range(k)])
        return centres

    # ------------------------------------------------------------------ scoring
    def _prepare(self, X: np.ndarray) -> np.ndarray:
        """Per-sample preprocessing before the robust scaler: the image stretch for images."""
        if self.arch is not None and self.arch.kind == "conv" and self.options.image_stretch and len(X):
            return image_stretch(X)
        return X

    def _region(self) -> bool:
        r = self.options.reduction
        return r == "region" or (r == "auto" and self.arch is not None and self.arch.kind == "conv")

    def _combine(self, recon: np.ndarray, maha: np.ndarray) -> np.ndarray:
        kind = self.options.score
        if kind == "reconstruction":
            s = recon
        elif kind == "latent":
            s = maha
        else:
            r0, r1, m0, m1 = self.norms
            s = np.maximum((recon - r0) / r1, (maha - m0) / m1)
        return np.where(np.isnan(s), np.inf, s)

    def _chunks(self, X: np.ndarray):
        """Yield standardised float32 tensors of at most score_batch rows, on the model's device."""
        assert self.scaler is not None
        bs = max(1, min(self.options.score_batch, len(X)))
        inv = torch.from_numpy(1.0 / self.scaler.scale)
        shift = torch.from_numpy(-self.scaler.center / self.scaler.scale)
        if self.device.type == "cuda":
            yield from self._cuda_chunks(X, bs, inv, shift)
            return
        for i in range(0, len(X), bs):
            yield torch.addcmul(shift, torch.from_numpy(_float32_rows(self._prepare(X[i : i + bs]))), inv)

    def _cuda_chunks(self, X: np.ndarray, bs: int, inv: torch.Tensor, shift: torch.Tensor):
        """Host-to-device copies from two pinned buffers on a side stream, overlapped with compute."""
        dev = self.device
        inv, shift = inv.to(dev), shift.to(dev)
        copy_stream = torch.cuda.Stream(dev)
        buffers = [torch.empty((bs, *X.shape[1:]), dtype=torch.float32).pin_memory() for _ in range(2)]
        done = [None, None]
        for k, i in enumerate(range(0, len(X), bs)):
            slot = k % 2
            if done[slot] is not None:
                done[slot].synchronize()  # the copy out of this buffer has finished
            m = min(bs, len(X) - i)
            buffers[slot][:m].copy_(torch.from_numpy(_float32_rows(self._prepare(X[i : i + m]))))
            with torch.cuda.stream(copy_stream):
                xb = buffers[slot][:m].to(dev, non_blocking=True)
                done[slot] = torch.cuda.Event()
                done[slot].record(copy_stream)
            torch.cuda.current_stream(dev).wait_event(done[slot])
            xb.record_stream(torch.cuda.current_stream(dev))
            yield torch.addcmul(shift, xb, inv)

    def _compiled(self):
        if getattr(self, "_compiled_model", None) is None:
            self._compiled_model = torch.compile(self.model, dynamic=True)
        return self._compiled_model

    def _raw_scores(self, X: np.ndarray, latent: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(reconstruction error (n,), squared Mahalanobis distance of the code (n,), codes (n, k) or None).

        The error is the mean squared standardised residual (images: of the worst 4x4 region).
        Everything per chunk stays on the model's device in float32; only (n,) vectors (and the
        codes when asked for) come back.
        """
        if self.model is None:
            raise SelectionError("the novelty model has not been fitted")
        X = self._check(X)
        recons, mahas, zs = [], [], []
        bf16, region = self.options.precision == "bf16", self._region()
        forward = self._compiled() if self.options.compile else self.model
        fitted = self.latent_whiten.size > 0
        if fitted:
            mean = torch.as_tensor(self.latent_mean, dtype=torch.float32, device=self.device)
            whiten = torch.as_tensor(self.latent_whiten, dtype=torch.float32, device=self.device)
        threads = torch.get_num_threads()
        # Intra-op threads only pay off on large batches; on a small one (a campaign's single
        # measurement) their start-up and, on a busy machine, their waiting dominate.
        torch.set_num_threads(self.options.threads or (1 if X.size < 2**16 else threads))
        try:
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                for xs in self._chunks(X):
                    recon, z = forward(xs)
                    err = (recon.float() - xs).square_()
                    recons.append(_region_max(err) if region else err.flatten(1).mean(1))
                    z = z.float()
                    if fitted:
                        mahas.append(torch.mm(z - mean, whiten).square_().sum(1))
                    if latent:
                        zs.append(z)
        finally:
            torch.set_num_threads(threads)
        host = lambda parts, shape: torch.cat(parts).cpu().double().numpy() if parts else np.zeros(shape)  # noqa: E731
        n = len(X)
        return (host(recons, (n,)), host(mahas, (n,)) if fitted else np.zeros(n),
                host(zs, (n, 0)) if latent else None)

    def _check(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim == len(self.shape) and X.shape == self.shape:
            raise SelectionError(f"expected a batch of shape (n, {', '.join(map(str, self.shape))}), got one sample; add a leading axis")
        if X.ndim == 1 and self.shape == (1,):
            X = X[:, None]
        if X.shape[1:] != self.shape:
            raise SelectionError(f"data rows have shape {X.shape[1:]}, but the model was trained on rows of shape {self.shape}")
        return X

    def score_with_latent(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Novelty scores (n,) (higher is more novel; NaN input scores inf) and latent codes (n, k)."""
        recon, maha, z = self._raw_scores(batch)
        return self._combine(recon, maha), z

    def score(self, batch: np.ndarray) -> np.ndarray:
        """Novelty scores (n,) of a batch (n, *shape); higher is more novel."""
        recon, maha, _ = self._raw_scores(batch, latent=False)
        return self._combine(recon, maha)

    def pvalues(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values (1 + #{calib >= s}) / (n_calib + 1); uniform (or larger) on known data."""
        s = np.asarray(scores, dtype=float)
        n = len(self.calibration)
        at_least = n - np.searchsorted(self.calibration, s, side="left")
        return (1.0 + at_least) / (n + 1.0)

    def threshold(self, level: float) -> float:
        """The score above which a sample's p-value is below `level` (inf when none can be)."""
        n = len(self.calibration)
        m = math.ceil(level * (n + 1) - 1) - 1  # the most calibration scores >= s that still give p < level
        if m < 0:
            return math.inf
        return float(self.calibration[n - 1 - m]) if m < n else -math.inf

    def add_calibration(self, scores: np.ndarray) -> None:
        """Extend the calibration set with scores of data this model never saw (online conformal)."""
        s = np.sort(np.asarray(scores, dtype=float).ravel())
        s = s[np.isfinite(s)]
        self.calibration = np.insert(self.calibration, np.searchsorted(self.calibration, s), s)  # stays sorted

    def strata(self, latent: np.ndarray) -> np.ndarray:
        """Index of the nearest k-means centre of each latent code (n, k) -> (n,)."""
        d = ((np.asarray(latent)[:, None, :] - self.centres[None]) ** 2).sum(-1)
        return d.argmin(1)

    # ------------------------------------------------------------------ checkpoints
    def to_bytes(self, extra: dict | None = None) -> bytes:
        """A checkpoint: state dict + architecture + scaler + calibration, via torch.save."""
        if self.model is None or self.arch is None or self.scaler is None:
            raise SelectionError("the novelty model has not been fitted")
        t = lambda a: torch.as_tensor(np.asarray(a))  # noqa: E731
        blob = {
            "version": _CHECKPOINT_VERSION,
            "arch": self.arch.to_dict(),
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.options).items()},
            "seed": self.seed,
            "state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "center": t(self.scaler.center), "scale": t(self.scaler.scale),
            "calibration": t(self.calibration), "latent_mean": t(self.latent_mean),
            "latent_whiten": t(self.latent_whiten), "norms": list(self.norms), "centres": t(self.centres),
            "extra": extra or {},
        }
        buf = io.BytesIO()
        torch.save(blob, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes, device: str | None = None) -> tuple[NoveltyDetector, dict]:
        """A detector from `to_bytes` output, and the `extra` dict saved with it."""
        try:
            d = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign blob
            raise SelectionError(f"not a novelty checkpoint: {exc}") from None
        if not isinstance(d, dict) or d.get("version") != _CHECKPOINT_VERSION:
            raise SelectionError("not a novelty checkpoint of a version this aec reads")
        opts = dict(d["options"])
        if opts.get("hidden") is not None:
            opts["hidden"] = tuple(opts["hidden"])
        if device is not None:
            opts["device"] = device
        det = cls(DetectorOptions(**opts), seed=d["seed"])
        det.arch = Architecture.from_dict(d["arch"])
        det.model = build_autoencoder(det.arch)
        det.model.load_state_dict(d["state"])
        det.model.to(det.device).eval()
        det.scaler = RobustScaler(d["center"].numpy(), d["scale"].numpy())
        det.calibration = d["calibration"].double().numpy()
        det.latent_mean, det.latent_whiten = d["latent_mean"].numpy(), d["latent_whiten"].numpy()
        det.norms = tuple(float(v) for v in d["norms"])
        if len(det.norms) != 4:
            raise SelectionError("the novelty checkpoint was written by an older aec (score norms); retrain it")
        det.centres = d["centres"].numpy()
        return det, dict(d["extra"])


# ---------------------------------------------------------------------------- offline selection
@dataclass(frozen=True)
class Budget:
    """What may be kept: at most floor(fraction * n) samples and/or at most `bytes` bytes."""

    fraction: float | None = None
    bytes: int | None = None

    def max_count(self, n: int) -> int:
        return n if self.fraction is None else int(math.floor(self.fraction * n + 1e-9))


def select(
    pvalues: np.ndarray,
    budget: Budget,
    *,
    level: float = 0.05,
    scores: np.ndarray | None = None,
    nbytes: np.ndarray | int | None = None,
    strata: np.ndarray | None = None,
    sample_rate: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Keep mask (n,) of bool: the novel (p < level), most novel first, then a stratified sample.

    Novel samples are taken in order of p-value (ties broken by higher `scores`) while the budget
    holds. Of the rest, each stratum (label in `strata`, one stratum when None) contributes about
    `sample_rate` of its members, drawn at random; if the budget cannot hold the whole sample the
    strata are cut in proportion. The budget is never exceeded: at most budget.max_count(n) kept,
    and their `nbytes` (per sample, or one size for all) sum to at most budget.bytes.
    """
    p = np.asarray(pvalues, dtype=float).ravel()
    n = len(p)
    keep = np.zeros(n, dtype=bool)
    if budget.bytes is not None and nbytes is None:
        raise SelectionError("a byte budget needs the size of each sample (nbytes)")
    size = np.broadcast_to(np.asarray(0 if nbytes is None else nbytes, dtype=np.int64), (n,))
    room_count = budget.max_count(n)
    room_bytes = math.inf if budget.bytes is None else int(budget.bytes)

    def take(order: np.ndarray) -> None:
        nonlocal room_count, room_bytes
        for i in order:
            if room_count <= 0:
                return
            if size[i] <= room_bytes:
                keep[i] = True
                room_count -= 1
                room_bytes -= size[i]

    novel = np.flatnonzero(p < level)
    tie = -np.asarray(scores, dtype=float).ravel()[novel] if scores is not None else np.zeros(len(novel))
    take(novel[np.lexsort((tie, p[novel]))])
    rest = np.flatnonzero(p >= level)
    if sample_rate > 0 and len(rest) and room_count > 0:
        rng = np.random.default_rng(seed)
        labels = np.zeros(len(rest), dtype=np.int64) if strata is None else np.asarray(strata).ravel()[rest]
        picked, rank = [], []
        for c in np.unique(labels):
            members = rest[labels == c]
            quota = int(math.floor(sample_rate * len(members) + rng.random()))
            chosen = rng.permutation(members)[:quota]
            picked.append(chosen)
            rank.append((np.arange(len(chosen)) + rng.random()) / max(quota, 1))  # interleaves strata
        if picked:
            chosen, rank = np.concatenate(picked), np.concatenate(rank)
            take(chosen[np.argsort(rank, kind="stable")])
    return keep


# ---------------------------------------------------------------------------- online selection
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
            ref = _as_rows(reference, "reference data set")
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


__all__ = ["Budget", "DetectorOptions", "NoveltyDetector", "NoveltySelector", "SelectionError", "select"]
