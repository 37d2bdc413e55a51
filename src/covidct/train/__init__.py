"""Training: configs, losses, datasets and the one training loop (``train(config) -> run dir``)."""

from __future__ import annotations

from covidct.train.config import Config, load_config
from covidct.train.loop import train
from covidct.train.schema import expand_grid

__all__ = ["train", "load_config", "expand_grid", "Config"]
