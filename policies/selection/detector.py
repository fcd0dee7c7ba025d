"""NoveltyDetector: an autoencoder of the known data with calibrated novelty scores, and its checkpoints.

`fit(known)` trains the network on part of the known data, early-stops on another part and scores a
third, held-out part for calibration; `score(batch)` gives one score per sample (higher is more
novel); `pvalues(scores)` turns scores into conformal p-values (`calibration`).
"""
from __future__ import annotations

import io
import logging
import threading
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch

from policies.selection.autoencoders import Architecture, architecture_for, build_autoencoder
from policies.selection.calibration import conformal_pvalues, conformal_threshold, extend_calibration, tail_units
from policies.selection.errors import SelectionError
from policies.selection.scaling import RobustScaler, image_stretch
from policies.selection.scores import ScoreKind, as_rows, combine_scores, float32_rows, region_max
from policies.selection.strata import kmeans_centres, nearest_centre
from policies.selection.training import Progress, TrainOptions, resolve_device, train_autoencoder

MIN_KNOWN = 8
_CHECKPOINT_VERSION = 1

logger = logging.getLogger(__name__)


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
        X = as_rows(known, "known data")
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
            X_cal = as_rows(calibration, "calibration data")
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
        recon, maha, _ = self._raw_scores(X_train, latent=False)
        self.norms = (*tail_units(recon), *tail_units(maha))
        self.centres = kmeans_centres(z, int(max(1, min(o.strata, len(z) // 20))), rng)
        self.calibration = np.sort(self.score(X_cal))
        return self

    # ------------------------------------------------------------------ scoring
    def _prepare(self, X: np.ndarray) -> np.ndarray:
        """Per-sample preprocessing before the robust scaler: the image stretch for images."""
        if self.arch is not None and self.arch.kind == "conv" and self.options.image_stretch and len(X):
            return image_stretch(X)
        return X

    def _region(self) -> bool:
        r = self.options.reduction
        return r == "region" or (r == "auto" and self.arch is not None and self.arch.kind == "conv")

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
            yield torch.addcmul(shift, torch.from_numpy(float32_rows(self._prepare(X[i : i + bs]))), inv)

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
            buffers[slot][:m].copy_(torch.from_numpy(float32_rows(self._prepare(X[i : i + m]))))
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
                    recons.append(region_max(err) if region else err.flatten(1).mean(1))
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
        return combine_scores(self.options.score, recon, maha, self.norms), z

    def score(self, batch: np.ndarray) -> np.ndarray:
        """Novelty scores (n,) of a batch (n, *shape); higher is more novel."""
        recon, maha, _ = self._raw_scores(batch, latent=False)
        return combine_scores(self.options.score, recon, maha, self.norms)

    def pvalues(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values of scores (n,) against the calibration set; uniform (or larger) on known data."""
        return conformal_pvalues(self.calibration, scores)

    def threshold(self, level: float) -> float:
        """The score above which a sample's p-value is below `level` (inf when none can be)."""
        return conformal_threshold(self.calibration, level)

    def add_calibration(self, scores: np.ndarray) -> None:
        """Extend the calibration set with scores of data this model never saw (online conformal)."""
        self.calibration = extend_calibration(self.calibration, scores)

    def strata(self, latent: np.ndarray) -> np.ndarray:
        """Index of the nearest k-means centre of each latent code (n, k) -> (n,)."""
        return nearest_centre(latent, self.centres)

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
