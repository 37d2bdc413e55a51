"""The run folder and everything around the training loop that every trainer shares.

A run directory holds::

    config.resolved.yaml   the validated config (all defaults filled in)
    split.json             case-level split: record ids and case ids per part
    log.csv                one row per epoch (log.jsonl for click-guided runs)
    tb/                    TensorBoard curves
    best.pt                best checkpoint by the validation score (covidct checkpoint, see models.checkpoint)
    last.pt                full training state for ``resume=True``
    metrics.json           summary (best epoch, validation and test metrics, timing)
    card.json              model card of best.pt (sha256, data, split cases, config, metrics)

Owns: creating the folder, the device, optimiser and schedule, fine-tuning weights (``init_from``), the
training state in ``last.pt`` (with the random generators, so a resumed run continues the same
sequence), the CSV/JSON-lines logs and TensorBoard, the early-stopping rule, the case-level split file
and the closing ``metrics.json`` + ``card.json``. The loop itself is :func:`covidct.train.loop.fit`.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from covidct.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from torch.optim.lr_scheduler import LRScheduler


@dataclass
class Progress:
    """Where a run stands: what ``last.pt`` keeps besides the weights, and how the loop ended."""

    start_epoch: int = 0
    best: float = -float("inf")
    best_epoch: int = -1
    bad: int = 0  # validations in a row without a gain (early stopping)
    elapsed: float = 0.0  # training seconds so far (resumed runs included)
    best_metrics: dict = field(default_factory=dict)
    epochs_run: int = 0
    stopped: str = "epochs"


def device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda`` (ConfigError when there is none)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    return torch.device(name)


def make_optimizer(o: Any, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser of an ``optimizer:`` section (:class:`covidct.train.config.OptimizerConfig`)."""
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, weight_decay=o.weight_decay)


def make_scheduler(s: Any, opt: torch.optim.Optimizer, epochs: int) -> LRScheduler | None:
    """The per-epoch learning-rate schedule of a ``schedule:`` section, or None."""
    if s.name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=s.gamma)
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=s.min_lr)
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=s.step_size, gamma=s.gamma)
    return None


def prepare_run_dir(run_dir: str | Path, resume: bool, config: dict, *, refuse: tuple[str, ...] = ("last.pt", "best.pt")
                    ) -> Path:
    """Create the run folder (refusing one that holds ``refuse`` files unless resuming) and write the config
    as ``config.resolved.yaml``."""
    import yaml

    run_dir = Path(run_dir)
    if not resume and any((run_dir / f).exists() for f in refuse):
        raise ConfigError(f"output.run_dir: {run_dir} already holds a run (resume it or choose another folder)")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.resolved.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return run_dir


def init_weights(model: torch.nn.Module, source: str) -> list[str]:
    """Load the weights of ``source`` (shipped name, checkpoint or run folder) into ``model`` for fine-tuning;
    ConfigError when the architectures differ.

    A ``contrastive`` pre-training checkpoint ends in a projection of its own width: every weight but
    the tensors whose shape differs (that last layer) is loaded, the rest keep their fresh initialisation.
    Returns the names left out (empty for a full load).
    """
    from covidct.models.checkpoint import read_checkpoint
    from covidct.models.zoo import resolve_model_path

    weights, _ = resolve_model_path(source)
    ckpt = read_checkpoint(weights)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    if ckpt.get("task") == "contrastive":
        own = model.state_dict()
        skipped = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
        # only the projection (one weight and its bias) may differ; anything more is another network
        if len(skipped) > 2 or set(own) != set(state):
            raise ConfigError(f"model.init_from: {source} (contrastive pre-training of "
                              f"{ckpt['model']['name']}) does not fit this model")
        own.update({k: v for k, v in state.items() if k not in skipped})
        model.load_state_dict(own)
        return skipped
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"model.init_from: {source} does not fit this model: {str(e).splitlines()[0]}") from e
    return []


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["random"])


def save_training_state(last_path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                        sched: LRScheduler | None, epoch: int, p: Progress) -> None:
    """Write last.pt (atomically: Ctrl-C mid-write keeps the previous one): everything
    :func:`restore_training_state` needs to continue the run after ``epoch``."""
    from covidct.models.checkpoint import save_atomic

    save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict() if sched is not None else None, "epoch": epoch, "best": p.best,
                 "best_epoch": p.best_epoch, "bad": p.bad, "elapsed": p.elapsed, "best_metrics": p.best_metrics,
                 "rng": _rng_state()}, last_path)


def restore_training_state(last_path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                           sched: LRScheduler | None) -> Progress:
    """Load last.pt into model/optimizer/scheduler and the random generators; returns the run's progress."""
    st = torch.load(last_path, map_location="cpu", weights_only=False)  # our own file: optimizer state
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    if sched is not None and st.get("scheduler"):
        sched.load_state_dict(st["scheduler"])
    if "rng" in st:  # 3-D runs of earlier versions saved none
        _set_rng_state(st["rng"])
    return Progress(start_epoch=st["epoch"] + 1, best=st["best"], best_epoch=st["best_epoch"], bad=st["bad"],
                    elapsed=st["elapsed"], best_metrics=st.get("best_metrics", {}), epochs_run=st["epoch"] + 1)


def start_training(model: torch.nn.Module, optimizer_cfg: Any, schedule_cfg: Any, epochs: int, *,
                   init_from: str | None, last_path: Path, resume: bool, say: Any, name: str
                   ) -> tuple[torch.optim.Optimizer, LRScheduler | None, Progress]:
    """Fine-tuning weights (``init_from``, on a fresh run), optimiser, schedule and, when resuming, the
    state of ``last.pt``: (optimizer, scheduler or None, progress)."""
    if init_from and not (resume and last_path.is_file()):
        # fine-tuning / transfer: same architecture, new schedule (from a contrastive run: all but its projection)
        fresh = init_weights(model, str(init_from))
        say(f"[{name}] weights initialised from {init_from}{f' (freshly initialised: {fresh})' if fresh else ''}",
            flush=True)
    opt = make_optimizer(optimizer_cfg, model.parameters())
    sched = make_scheduler(schedule_cfg, opt, epochs)
    progress = Progress()
    if resume and last_path.is_file():
        progress = restore_training_state(last_path, model, opt, sched)
        say(f"[{name}] resumed after epoch {progress.start_epoch - 1} (best {progress.best:.4f} at epoch "
            f"{progress.best_epoch + 1})", flush=True)
    elif resume:
        say(f"[{name}] nothing to resume; starting fresh", flush=True)
    return opt, sched, progress


class CsvLog:
    """``log.csv``: one row per epoch; the columns are those of the first row written."""

    def __init__(self, path: Path, append: bool) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if append and path.is_file():
            with open(path) as f:
                self.fields = next(csv.reader(f), None)
        elif path.exists():
            path.unlink()

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


class JsonLinesLog:
    """``log.jsonl``: one JSON object per line (rows whose columns vary)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def open_run_logs(run_dir: Path, tensorboard: bool, append: bool, *, jsonl: bool = False) -> tuple:
    """The run's TensorBoard writer (None when off) and its log (CSV, ``append`` when resuming; or JSON lines)."""
    writer = None
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
    return writer, JsonLinesLog(run_dir / "log.jsonl") if jsonl else CsvLog(run_dir / "log.csv", append=append)


def log_epoch(log: CsvLog | JsonLinesLog, writer: Any, row: dict, scalars: dict[str, float], step: int | None = None) -> None:
    """One epoch's log row, and its scalars (tag -> value) in TensorBoard at ``step`` (default ``row["epoch"]``)."""
    log.write(row)
    if writer is not None:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, row["epoch"] if step is None else step)
        writer.flush()


def stop_reason(t: Any, bad: int, elapsed: float, gain: str, unit: str = "epochs") -> str | None:
    """Why training stops after this epoch (early stopping on ``gain``, then the time budget), or None.

    ``t`` has ``patience`` (validations without a gain, or None) and ``max_minutes`` (or None)."""
    patience = getattr(t, "patience", None)
    if patience is not None and bad >= patience:
        return f"early stopping (no {gain} gain for {patience} {unit})"
    if t.max_minutes is not None and elapsed >= t.max_minutes * 60:
        return "time budget"
    return None


def write_split(run_dir: Path, split: dict[str, list[str]], seed: int, info: dict | None = None,
                source: str | None = None) -> None:
    """``run_dir/split.json``: record ids per part (save_split format), the seed and, in ``info``, case ids."""
    doc: dict = {"splits": split, "seed": seed}
    if source is not None:
        doc["source"] = source
    if info is not None:
        doc["info"] = info
    (run_dir / "split.json").write_text(json.dumps(doc, indent=1) + "\n")


def make_split(cfg: Any, records: list[dict], run_dir: Path, resume: bool) -> dict[str, list[str]]:
    """Case-level split of a 2-D run (fractions, a split file or explicit cases), written to ``split.json``;
    a resumed run keeps the split it started with."""
    from covidct.train import datasets as ds

    split_path = run_dir / "split.json"
    split = ds.read_split(split_path) if resume and split_path.is_file() else ds.configured_split(records, cfg.data.split)
    ds.check_split(records, split)
    by_id = {r["id"]: r for r in records}
    cases = {k: sorted({ds._group(by_id[i]) for i in v if i in by_id}) for k, v in split.items()}
    write_split(run_dir, split, cfg.data.split.seed, source=",".join(s.name for s in cfg.data.sources),
                info={"fractions": cfg.data.split.fractions, "file": cfg.data.split.file, "cases": cases})
    return split


def finish_run(run_dir: Path, summary: dict, best_path: Path, *, name: str, task: str, classes: list[str],
               data: dict, split: dict, config: dict, metrics: dict) -> None:
    """Write ``metrics.json`` (``summary``) and, when there is a best.pt, its model card ``card.json``."""
    from covidct.models.checkpoint import write_card

    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1, default=float))
    if best_path.is_file():
        write_card(run_dir / "card.json", best_path, name=name, version="0", task=task, classes=classes, data=data,
                   split=split, config=config, training_time_s=summary["train_time_s"], metrics=metrics,
                   command=f"covidct train {run_dir / 'config.resolved.yaml'}")


@dataclass
class Run:
    """A run being set up: its folder and checkpoint paths, the device and the console."""

    dir: Path
    last_path: Path
    best_path: Path
    device: torch.device
    say: Any
    config: dict  # as written to config.resolved.yaml


def open_run(run_dir: str | Path, resume: bool, config: dict, *, seed: int, device_name: str, verbose: bool,
             refuse: tuple[str, ...] = ("last.pt", "best.pt")) -> Run:
    """Create the run folder (:func:`prepare_run_dir`), seed every generator (MONAI ``set_determinism``)
    and pick the device."""
    from monai.utils import set_determinism

    run_dir = prepare_run_dir(run_dir, resume, config, refuse=refuse)
    set_determinism(seed=seed)
    return Run(dir=run_dir, last_path=run_dir / "last.pt", best_path=run_dir / "best.pt", device=device(device_name),
               say=print if verbose else (lambda *a, **k: None), config=config)


def open_slice_run(cfg: Any, run_dir: str | Path, resume: bool, verbose: bool, records: list[dict] | None) -> tuple:
    """:func:`open_run` for a 2-D config (:class:`covidct.train.config.Config`): (run, normalisation, records
    (the configured sources' unless given))."""
    from covidct.preprocess import NormalisationConfig
    from covidct.train import datasets as ds
    from covidct.train.config import config_to_dict

    t = cfg.train
    run = open_run(run_dir, resume, config_to_dict(cfg), seed=t.seed, device_name=t.device, verbose=verbose)
    norm = NormalisationConfig.from_dict(cfg.normalisation)
    return run, norm, records if records is not None else ds.load_records(cfg.data.sources)
