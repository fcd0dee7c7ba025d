"""Fitting an autoencoder: AdamW with a validation split and early stopping, with optional progress, on a chosen device."""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from policies.selection.errors import SelectionError

logger = logging.getLogger(__name__)

Progress = Literal["off", "bar", "log"]


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
