"""Autoencoders that learn what is already known: robust scaling, the networks, and their training.

A data product of shape `shape` (a vector or spectrum `(d,)`, an image `(H, W)` or `(C, H, W)`)
gets an MLP or a small convolutional autoencoder (`architecture_for`). Inputs are standardised per
feature by the median and interquartile range of the known data (`RobustScaler`), so a few extreme
known measurements do not set the scale. `train_autoencoder` fits a network with a validation
split and early stopping, optionally showing a progress bar or logging rate and ETA. Novelty
scores, calibration and checkpoints built on these live in `policies/novelty.py`.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

Progress = Literal["off", "bar", "log"]


class SelectionError(ValueError):
    """Data the novelty selector cannot use: wrong shape, too few or no known measurements."""


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> the first CUDA device when present, else the CPU; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise SelectionError(f"device: expected 'auto', 'cpu' or 'cuda[:i]', got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SelectionError(f"device: {name!r} was asked for but torch sees no CUDA device")
    return device


# --------------------------------------------------------------------------- scaling
@dataclass
class RobustScaler:
    """Per-feature (x - median) / scale, scale = IQR / 1.349 (the std of a normal distribution).

    Features whose IQR is zero (constant borders of an image, a channel that is rarely lit) fall
    back to the standard deviation, and every scale is floored at `floor` times the median of the
    positive scales, so such features neither blow up in training nor vanish from the score.
    center, scale: arrays of one sample's shape.
    """

    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray, floor: float = 1.0) -> RobustScaler:
        """X: (n, *shape) known measurements, n >= 1."""
        X = np.asarray(X, dtype=np.float64)
        q25, center, q75 = np.percentile(X, [25.0, 50.0, 75.0], axis=0)
        scale = (q75 - q25) / 1.349
        flat = scale <= 1e-12
        if flat.any():
            scale = np.where(flat, X.std(axis=0), scale)
        positive = scale[scale > 1e-12]
        reference = float(np.median(positive)) if positive.size else 1.0
        scale = np.maximum(scale, floor * reference)
        return cls(center.astype(np.float32), scale.astype(np.float32))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, dtype=np.float32) - self.center) / self.scale).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- networks
@dataclass(frozen=True)
class Architecture:
    """What network to build: kind 'mlp' or 'conv', one sample's shape, latent width, layer widths.

    `hidden` holds the MLP's hidden widths (encoder order; the decoder mirrors them) or the
    convolutional encoder's channels (each layer halves the image); `latent` is the MLP's code
    width or the channels of each cell of the convolutional network's spatial code.
    """

    kind: str
    shape: tuple[int, ...]
    latent: int
    hidden: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "shape": list(self.shape), "latent": self.latent, "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, d: dict) -> Architecture:
        return cls(str(d["kind"]), tuple(int(s) for s in d["shape"]), int(d["latent"]), tuple(int(h) for h in d["hidden"]))


def _is_image(shape: tuple[int, ...]) -> bool:
    if len(shape) == 2:
        return min(shape) >= 16
    return len(shape) == 3 and shape[0] <= 8 and min(shape[1:]) >= 16


def architecture_for(
    shape: tuple[int, ...], latent: int = 8, kind: str = "auto", hidden: tuple[int, ...] | list[int] | None = None
) -> Architecture:
    """Pick a network for data products of `shape`.

    Images ((H, W) or (C, H, W) with C <= 8, both sides >= 16) get the convolutional network
    with latent // 4 channels per code cell (64x64 with latent 8: 8x8 cells x 2 = 128 numbers),
    everything else is flattened into the MLP. Default MLP widths: d/2 clipped to [128, 256], then
    64; scoring cost is dominated by the first and last layers (for d = 256: 256-128-64-8).
    """
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise SelectionError(f"a data product must have at least one feature, got shape {shape}")
    if latent < 1:
        raise SelectionError(f"latent: expected a positive width, got {latent}")
    if kind == "auto":
        kind = "conv" if _is_image(shape) else "mlp"
    if kind == "conv":
        if len(shape) not in (2, 3):
            raise SelectionError(f"a convolutional autoencoder needs (H, W) or (C, H, W) data, got shape {shape}")
        return Architecture("conv", shape, max(1, latent // 4), tuple(hidden) if hidden else (8, 16, 32))
    if kind != "mlp":
        raise SelectionError(f"architecture: expected 'auto', 'mlp' or 'conv', got {kind!r}")
    d = math.prod(shape)
    if hidden is None:
        h1 = int(min(256, max(128, d // 2)))
        h2 = int(max(2 * latent, min(64, h1 // 2)))
        hidden = (h1, h2)
    return Architecture("mlp", shape, latent, tuple(int(h) for h in hidden))


class MLPAutoencoder(nn.Module):
    """Fully connected autoencoder over flattened samples: (b, *shape) -> (reconstruction, latent (b, k))."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.shape = arch.shape
        widths = [math.prod(arch.shape), *arch.hidden, arch.latent]
        self.encoder = self._stack(widths)
        self.decoder = self._stack(widths[::-1])

    @staticmethod
    def _stack(widths: list[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.ReLU(inplace=True))
        return nn.Sequential(*layers)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.reshape(x.shape[0], -1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decoder(z).reshape(x.shape), z


class ConvAutoencoder(nn.Module):
    """Small convolutional autoencoder for image cutouts (b, H, W) or (b, C, H, W).

    Each encoder layer is a stride-2 3x3 convolution; a 1x1 convolution then squeezes every cell
    of the coarse grid to `arch.latent` channels, so the code is spatial (64x64 -> 8x8 cells x 2).
    A spatial code reconstructs what is common anywhere in a cutout (stars, galaxies, noise) and
    fails on shapes never seen (a streak, a ring), which a dense code of a few numbers cannot tell
    apart from a busy star field. Images are zero-padded to a multiple of 2**layers and the
    reconstruction cropped back, so any size >= 16 works.
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        self.shape = arch.shape
        c, h, w = (1, *arch.shape) if len(arch.shape) == 2 else arch.shape
        self.channels, self.height, self.width = c, h, w
        m = 2 ** len(arch.hidden)
        self.pad_h, self.pad_w = (-h) % m, (-w) % m
        chans = [c, *arch.hidden]
        enc: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            enc += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
        enc.append(nn.Conv2d(chans[-1], arch.latent, 1))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(arch.latent, chans[-1], 1), nn.ReLU(inplace=True)]
        rev = chans[::-1]
        for i, (a, b) in enumerate(zip(rev[:-1], rev[1:])):
            dec.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
            if i < len(rev) - 2:
                dec.append(nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(*dec)

    def _as_image(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.channels, self.height, self.width)
        if self.pad_h or self.pad_w:
            x = F.pad(x, (0, self.pad_w, 0, self.pad_h))
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self._as_image(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(self._as_image(x))
        out = self.decoder(code)[:, :, : self.height, : self.width]
        return out.reshape(x.shape), code.flatten(1)


def image_stretch(X: np.ndarray, soften: float = 3.0) -> np.ndarray:
    """Each image (n, ...) to units of its own noise, bright parts compressed: soften * asinh(x / soften).

    x = (image - its median) / (1.4826 * its median absolute deviation). Cutouts taken in
    different conditions (sky brightness, seeing) then share one scale, and bright stars no
    longer dominate the reconstruction error: near the noise the map is linear, above it logarithmic.
    """
    F_ = np.asarray(X, dtype=np.float32).reshape(len(X), -1)
    med = np.median(F_, axis=1, keepdims=True)
    mad = 1.4826 * np.median(np.abs(F_ - med), axis=1, keepdims=True)
    spread = np.where(mad > 0, mad, np.maximum(F_.std(axis=1, keepdims=True), 1e-12))
    return (soften * np.arcsinh((F_ - med) / (soften * spread))).reshape(np.shape(X)).astype(np.float32)


def build_autoencoder(arch: Architecture, seed: int | None = None) -> nn.Module:
    """The network for `arch`, its weights drawn from `seed` (without touching torch's global RNG)."""
    model: nn.Module = MLPAutoencoder(arch) if arch.kind == "mlp" else ConvAutoencoder(arch)
    if seed is not None:
        g = torch.Generator().manual_seed(int(seed))
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_uniform_(m.weight, a=0.0, nonlinearity="relu", generator=g)
                bound = 1.0 / math.sqrt(max(m.weight[0].numel(), 1))
                with torch.no_grad():
                    m.bias.uniform_(-bound, bound, generator=g)
    return model


# --------------------------------------------------------------------------- training
@dataclass
class TrainOptions:
    """How to fit: AdamW with early stopping on the validation loss (mean squared error)."""

    epochs: int = 200
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    patience: int = 20
    time_limit: float | None = None
    progress: Progress = "off"
    seed: int = 0
    threads: int | None = None  # None: 1 for small networks (parallel overhead dominates), else torch's setting


def _train_threads(model: nn.Module, batch: int, requested: int | None) -> int:
    if requested is not None:
        return max(1, requested)
    work = batch * sum(p.numel() for p in model.parameters())
    return 1 if work < 2**24 else torch.get_num_threads()


@dataclass
class TrainReport:
    epochs: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    stopped: str
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)


class _EpochReporter:
    """Shows training progress: a rich bar ('bar'), log lines with rate and ETA ('log'), or nothing."""

    def __init__(self, mode: Progress, total: int):
        self.mode, self.total, self.t0 = mode, total, time.perf_counter()
        self.last_log = self.t0
        self._bar = None
        if mode == "bar":
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("autoencoder"), BarColumn(), TextColumn("{task.completed}/{task.total} epochs"),
                TextColumn("{task.fields[rate]:.1f} ep/s val {task.fields[val]:.4g}"),
                TimeElapsedColumn(), TimeRemainingColumn(), transient=True,
            )
            self._task = self._bar.add_task("fit", total=total, rate=0.0, val=float("nan"))
            self._bar.start()

    def update(self, epoch: int, train: float, val: float) -> None:
        now = time.perf_counter()
        rate = epoch / max(now - self.t0, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, completed=epoch, rate=rate, val=val)
        elif self.mode == "log" and (now - self.last_log >= 2.0 or epoch == self.total):
            self.last_log = now
            eta = (self.total - epoch) / max(rate, 1e-9)
            logger.info("autoencoder epoch %d/%d train %.4g val %.4g (%.1f epochs/s, ETA %.0f s at most)",
                        epoch, self.total, train, val, rate, eta)

    def close(self, epoch: int, stopped: str) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self.mode == "log":
            seconds = time.perf_counter() - self.t0
            logger.info("autoencoder done: %d epochs in %.1f s (%.1f epochs/s), %s", epoch, seconds, epoch / max(seconds, 1e-9), stopped)


def _mean_loss(model: nn.Module, X: torch.Tensor, batch: int) -> float:
    total = 0.0
    with torch.inference_mode():
        for i in range(0, len(X), batch):
            xb = X[i : i + batch]
            recon, _ = model(xb)
            total += float(F.mse_loss(recon, xb, reduction="sum"))
    return total / max(X.numel(), 1)


def train_autoencoder(
    model: nn.Module,
    X_train: torch.Tensor,
    X_val: torch.Tensor,
    options: TrainOptions,
    stop: threading.Event | None = None,
) -> TrainReport:
    """Fit `model` to standardised X_train (n, *shape), keeping the weights with the best loss on X_val.

    Stops after `options.epochs`, after `patience` epochs without improvement, at `time_limit`
    seconds, or when `stop` is set (a closing selector); the best weights are loaded either way.
    """
    device = next(model.parameters()).device
    X_train, X_val = X_train.to(device), X_val.to(device)
    g = torch.Generator().manual_seed(int(options.seed))
    opt = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    batch = max(1, min(options.batch_size, len(X_train)))
    # At least ~4 steps per epoch on tiny data sets, so early epochs are not wasted.
    batch = max(1, min(batch, math.ceil(len(X_train) / 4)))
    best = (math.inf, 0)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    report = TrainReport(epochs=0, best_epoch=0, best_val_loss=math.inf, seconds=0.0, stopped="epochs")
    reporter = _EpochReporter(options.progress, options.epochs)
    threads = torch.get_num_threads()
    torch.set_num_threads(_train_threads(model, batch, options.threads))  # per calling thread
    t0 = time.perf_counter()
    try:
        for epoch in range(1, options.epochs + 1):
            model.train()
            perm = torch.randperm(len(X_train), generator=g).to(device)
            running = 0.0
            for i in range(0, len(X_train), batch):
                xb = X_train[perm[i : i + batch]]
                recon, _ = model(xb)
                loss = F.mse_loss(recon, xb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += loss.item() * len(xb)
            model.eval()
            val = _mean_loss(model, X_val, 4096) if len(X_val) else running / len(X_train)
            report.train_loss.append(running / len(X_train))
            report.val_loss.append(val)
            report.epochs = epoch
            reporter.update(epoch, report.train_loss[-1], val)
            if val < best[0] * (1 - 1e-4):
                best = (val, epoch)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if epoch - best[1] >= options.patience:
                report.stopped = "early stopping"
                break
            if options.time_limit is not None and time.perf_counter() - t0 > options.time_limit:
                report.stopped = "time limit"
                break
            if stop is not None and stop.is_set():
                report.stopped = "closed"
                break
    finally:
        reporter.close(report.epochs, report.stopped)
        torch.set_num_threads(threads)
    model.load_state_dict(best_state)
    model.eval()
    report.best_val_loss, report.best_epoch = best
    report.seconds = time.perf_counter() - t0
    logger.debug("autoencoder trained: %d epochs (%s), best val %.4g at %d, %.1f s",
                 report.epochs, report.stopped, best[0], best[1], report.seconds)
    return report
