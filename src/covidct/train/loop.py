"""The one training entry point ``train(config) -> run dir`` and the one training loop, :func:`fit`.

Every kind of run (2-D segmentation, classification, contrastive pre-training, 3-D segmentation,
click-guided refinement) goes through :func:`train` and trains with :func:`fit`: the epochs, the
optimiser steps, the non-finite-loss guard, the schedule, keeping the best checkpoint, the log row, the
training state in ``last.pt``, early stopping and the time budget are written once, here. What differs
between the kinds is a :class:`Task` each trainer module plugs in: its batches, its loss, its validation
score, how it saves the best model and what it logs (``segment``, ``classify``, ``pretrain``, ``seg3d``,
``interactive``). The run folder and the shared set-up are :mod:`covidct.train.runs`.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidct.errors import ConfigError
from covidct.train.config import Config, config_to_dict, load_config
from covidct.train.runs import Progress, Run, save_training_state, stop_reason
from covidct.train.schema import apply_overrides, expand_grid, load_raw


@dataclass
class Validation:
    """One epoch's validation: ``score`` (higher is better; None when this epoch is not validated, so the
    best model and early stopping are not judged), the metrics kept with the best model, and log fields."""

    score: float | None
    metrics: dict = field(default_factory=dict)
    row: dict = field(default_factory=dict)


@dataclass
class Epoch:
    """What :meth:`Task.report` gets after each epoch."""

    epoch: int  # 0-based
    train_loss: float
    lr: float  # the learning rate this epoch trained with
    seconds: float
    val: Validation
    improved: bool


@dataclass
class LoopSettings:
    """How :func:`fit` runs: ``epochs``, ``max_minutes`` (budget, or None), ``patience`` (validations
    without a gain before stopping, or None); ``gain``/``unit`` name them in the stop reason; the schedule
    steps every epoch or, with ``step_schedule``, every optimiser step; ``progress_bar`` on stderr."""

    epochs: int
    max_minutes: float | None = None
    patience: int | None = None
    gain: str = "val Dice"
    unit: str = "epochs"
    step_schedule: bool = False
    progress_bar: bool = True


class Task:
    """The task-specific parts of a training run (override what differs)."""

    def batches(self, epoch: int) -> Iterable:
        """The training batches of one epoch."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """Forward pass and loss of one batch (the model is in training mode)."""
        raise NotImplementedError

    def after_step(self, loss: float) -> None:
        """Called after every optimiser step with its loss."""

    def validate(self, model: torch.nn.Module, epoch: int, train_loss: float) -> Validation:
        """The epoch's validation; by default (no validation data) the training loss is the score."""
        return Validation(score=-train_loss)

    def save_best(self, model: torch.nn.Module, metrics: dict) -> None:
        """Save the best model so far (best.pt)."""

    def report(self, e: Epoch) -> None:
        """Log the epoch (log file, TensorBoard, console)."""

    def stop_reason(self) -> str | None:
        """A task-specific reason to stop after this epoch, or None."""
        return None


class LoaderTask(Task):
    """A task whose batches come from a data loader and whose best.pt holds ``{"val": metrics}`` (2-D runs)."""

    def __init__(self, cfg: Any, run: Run, loss_fn: Any, train_dl: Iterable, val_dl: Iterable | None, writer: Any,
                 log: Any, ckpt: dict) -> None:
        self.cfg, self.run, self.loss_fn, self.train_dl, self.val_dl = cfg, run, loss_fn, train_dl, val_dl
        self.writer, self.log, self.ckpt = writer, log, ckpt

    def batches(self, epoch: int) -> Iterable:
        return self.train_dl

    def save_best(self, model: torch.nn.Module, metrics: dict) -> None:
        from covidct.models.checkpoint import save_checkpoint

        save_checkpoint(self.run.best_path, model, **self.ckpt, metrics={"val": metrics}, fp16=self.cfg.train.save_fp16)


def fit(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, task: Task, s: LoopSettings,
        progress: Progress, last_path: Path | None = None, verbose: bool = True) -> Progress:
    """Train ``model`` from ``progress.start_epoch`` to ``s.epochs`` (see the module docstring).

    After each epoch: validation, best.pt when the score improved, the task's report, ``last.pt`` (when
    ``last_path`` is given), then early stopping and the time budget. Returns the final progress
    (``epochs_run``, ``stopped``, best score/epoch/metrics, training seconds).
    """
    from tqdm import tqdm

    p = progress
    for epoch in range(p.start_epoch, s.epochs):
        if s.max_minutes is not None and p.elapsed >= s.max_minutes * 60:
            p.stopped = "time budget"
            break
        t0 = time.time()
        model.train()
        losses: list[float] = []
        bar = tqdm(task.batches(epoch), desc=f"epoch {epoch + 1}/{s.epochs}", leave=False,
                   disable=not (verbose and s.progress_bar), file=sys.stderr, dynamic_ncols=True)
        for batch in bar:
            opt.zero_grad(set_to_none=True)
            loss = task.loss(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss.detach())} at epoch {epoch + 1} (lower optimizer.lr?)")
            loss.backward()
            opt.step()
            if s.step_schedule and sched is not None:
                sched.step()
            losses.append(float(loss.detach()))
            task.after_step(losses[-1])
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        lr = opt.param_groups[0]["lr"]
        if sched is not None and not s.step_schedule:
            sched.step()
        train_loss = float(np.mean(losses)) if losses else float("nan")
        val = task.validate(model, epoch, train_loss)
        p.elapsed += time.time() - t0
        improved = val.score is not None and val.score > p.best
        if improved:
            p.best, p.best_epoch, p.bad, p.best_metrics = val.score, epoch, 0, val.metrics
            task.save_best(model, val.metrics)
        elif val.score is not None:
            p.bad += 1
        p.epochs_run = epoch + 1
        task.report(Epoch(epoch, train_loss, lr, round(time.time() - t0, 2), val, improved))
        if last_path is not None:
            save_training_state(last_path, model, opt, sched, epoch, p)
        if reason := task.stop_reason() or stop_reason(s, p.bad, p.elapsed, s.gain, s.unit):
            p.stopped = reason
            break
    return p


def train(config: str | Path | dict | Config, run_dir: str | Path | None = None, resume: bool = False, *,
          records: list[dict] | None = None, verbose: bool = True, overrides: list[str] | None = None,
          variants: list[str] | None = None) -> Path:
    """Train from a YAML path, dict or :class:`Config`; returns the run directory.

    A config with a ``grid:`` runs every variant into ``<run_dir>/<variant>/`` and returns
    ``<run_dir>`` (with ``grid_summary.csv``). ``records`` replaces the configured sources (tests,
    notebooks). ``resume=True`` continues from ``<run_dir>/last.pt``. ``overrides``: ``KEY=VALUE`` strings
    (:func:`covidct.train.config.apply_overrides`), e.g. a shortened CPU schedule of a paper's experiment.
    ``variants``: glob patterns; only grid variants whose name matches one of them run (e.g. ``*seed-0``).
    """
    raw = config_to_dict(config) if isinstance(config, Config) else load_raw(config)
    raw = apply_overrides(raw, overrides)
    with _removed_if_failed_early(run_folder(raw, run_dir)):
        return _train(raw, run_dir, resume, records, verbose, variants)


def run_folder(raw: dict, run_dir: str | Path | None = None) -> Path:
    """The folder a run of the config ``raw`` (a dict, overrides applied) writes to."""
    output = raw.get("output") if isinstance(raw.get("output"), dict) else {}
    return Path(run_dir or str(output.get("run_dir", "runs/{name}")).format(name=raw.get("name", "run")))


@contextmanager
def _removed_if_failed_early(run_dir: Path):
    """A run folder this call creates is removed again when the run fails before its first checkpoint (a
    config or data error, an interrupt in the first epoch): no folder left holding only a config."""
    existed = run_dir.exists()
    try:
        yield
    except BaseException:
        if not existed and run_dir.is_dir() and not any(run_dir.rglob("*.pt")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _train(raw: dict, run_dir: str | Path | None, resume: bool, records: list[dict] | None, verbose: bool,
           variants: list[str] | None) -> Path:
    if raw.get("kind") in ("seg3d", "interactive"):  # 3-D and click-guided paths (own config sections)
        from covidct.train import interactive, seg3d

        fn = seg3d.train_seg3d if raw["kind"] == "seg3d" else interactive.train_interactive
        return fn(raw, run_dir, resume, records=records, verbose=verbose)
    expanded = expand_grid(raw)
    if variants:
        from fnmatch import fnmatch

        if not raw.get("grid"):
            raise ConfigError("--variant: this config has no grid")
        chosen = [(n, d) for n, d in expanded if any(fnmatch(n, p) for p in variants)]
        if not chosen:
            raise ConfigError(f"--variant {' '.join(variants)}: no grid variant matches; variants: "
                              + ", ".join(n for n, _ in expanded))
        expanded = chosen
    if len(expanded) == 1 and not variants:
        return _train_one(load_config(expanded[0][1]), run_dir, resume, records, verbose)
    base = load_config(expanded[0][1])  # validates the shared part once, names the parent dir
    parent = Path(run_dir or base.output.run_dir.format(name=base.name))
    rows = []
    for vname, d in expanded:
        d["name"] = f"{raw.get('name', 'run')}_{vname}"
        cfg = load_config(d)
        if verbose:
            print(f"== grid variant {vname}", flush=True)
        out = _train_one(cfg, parent / vname, resume, records, verbose)
        m = json.loads((out / "metrics.json").read_text())
        rows.append({"variant": vname, "best_epoch": m.get("best_epoch"), "best_val_dice": m.get("best_val_dice"),
                     "test_dice": (m.get("test") or {}).get("foreground_dice"), "run_dir": str(out)})
    with open(parent / "grid_summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return parent


def _train_one(cfg: Config, run_dir: str | Path | None, resume: bool, records: list[dict] | None,
               verbose: bool) -> Path:
    """One 2-D run: classification, contrastive pre-training or segmentation, by the config's task."""
    from covidct.models.tasks import CLASSIFY_TASKS, PRETRAIN_TASKS

    if cfg.task in CLASSIFY_TASKS:  # image-level labels: own samples and metrics, same run layout
        from covidct.train.classify import train_classifier as trainer
    elif cfg.task in PRETRAIN_TASKS:
        from covidct.train.pretrain import train_contrastive as trainer
    else:
        from covidct.train.segment import train_segmentation as trainer
    run_dir = Path(run_dir or cfg.output.run_dir.format(name=cfg.name))
    return trainer(cfg, run_dir, resume, records, verbose)
