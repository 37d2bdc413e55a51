"""Deep Dream class images: what a trained 2-D segmenter or classifier responds to (seed 004, Fig. 4).

For each class, an input image is optimised by gradient ascent so that the network's mean output for
that class grows (class-activation maximisation, Simonyan et al. 2014; "Deep Dream", Mordvintsev et al.
2015). Unregularised ascent produces high-frequency noise that no CT contains, so the usual regularisers
are applied:

* **octaves**: the image is optimised first at a coarse scale, then upsampled and refined (each octave
  ``octave_scale`` times larger), so large structures form before fine texture. The image is always fed
  to the network at the model's own input size (resized, differentiably), so any 2-D network works;
* **jitter**: a random circular shift of up to ``jitter`` pixels before every step, so the image cannot
  exploit the exact pixel grid of strided convolutions;
* **smoothing**: a small Gaussian blur after every step and a total-variation penalty in the objective;
* **normalised steps**: the gradient is divided by its mean magnitude, so the step size means the same
  for every model; the image is kept inside the model-input range [0, 1].

The objective is the class's mean *logit* (its pre-softmax output, averaged over pixels for a
segmenter): maximising a softmax probability would also be served by lowering the other classes, which
says less about the class itself. The mean softmax probability is reported beside it.

Everything is deterministic for a given ``seed`` on one machine as long as the run is not cut short by
``time_limit_s`` (then ``stopped_early`` is recorded for that class).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from covidct.errors import ConfigError, ModelError


@dataclass(frozen=True)
class DreamSettings:
    """Parameters of :func:`dream`; the defaults keep one class under ~60 s on a 2-core CPU."""

    octaves: int = 3
    octave_scale: float = 1.6
    steps: int = 40  # gradient steps per octave
    step_size: float = 0.02  # in model-input units ([0, 1]) per step, after gradient normalisation
    jitter: int = 8  # pixels, at the model's input size
    blur_sigma: float = 0.5  # pixels of the current octave; 0 = no blur
    tv_weight: float = 0.3  # total-variation step, relative to the objective's (both normalised)
    time_limit_s: float = 60.0  # per class
    seed: int = 0

    def check(self) -> None:
        """ConfigError naming the first invalid setting."""
        if self.octaves < 1:
            raise ConfigError("--octaves must be at least 1")
        if self.steps < 1:
            raise ConfigError("--steps must be at least 1")
        if not self.octave_scale > 1.0:
            raise ConfigError("--octave-scale must be greater than 1")
        if not self.step_size > 0:
            raise ConfigError("--step-size must be positive")
        if not self.time_limit_s > 0:
            raise ConfigError("--time-limit must be positive (seconds per class)")
        if self.jitter < 0 or self.blur_sigma < 0 or self.tv_weight < 0:
            raise ConfigError("--jitter, blur and TV weight must not be negative")


@dataclass
class DreamResult:
    """One class's dream image (H, W) in model-input space [0, 1] and how the optimisation went."""

    class_index: int
    class_name: str
    image: np.ndarray
    history: list[float] = field(default_factory=list)  # the objective at every step (with jitter)
    initial_score: float = 0.0  # objective of the starting image, no jitter
    final_score: float = 0.0  # objective of the final image, no jitter
    initial_probability: float = 0.0  # mean softmax probability of the class, start and end
    final_probability: float = 0.0
    steps_run: int = 0
    seconds: float = 0.0
    stopped_early: bool = False

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("image", "history")}
        d["history_first_last"] = [self.history[0], self.history[-1]] if self.history else []
        return d


def _logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = net(x)
    return out[0] if isinstance(out, list | tuple) else out


def class_outputs(logits: torch.Tensor, class_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean logit, mean softmax probability) of one class over the batch and, for a segmenter, all pixels.

    ``logits`` is (B, C, H, W) for a segmenter or (B, C) for a classifier."""
    if logits.ndim not in (2, 4):
        raise ModelError(f"explain: unexpected model output of shape {tuple(logits.shape)}; "
                         "expected (B, C) or (B, C, H, W)")
    prob = torch.softmax(logits.float(), dim=1)
    return logits[:, class_index].float().mean(), prob[:, class_index].mean()


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflected borders (zero padding would darken the image's edges)."""
    if sigma <= 0:
        return x
    r = max(1, int(np.ceil(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def octave_sizes(input_size: tuple[int, int], octaves: int, scale: float) -> list[tuple[int, int]]:
    """Image sizes from the coarsest octave to the model's input size."""
    h, w = input_size
    return [(max(8, round(h / scale**k)), max(8, round(w / scale**k))) for k in reversed(range(octaves))]


def dream(
    net: nn.Module,
    class_index: int,
    input_size: tuple[int, int],
    *,
    start: torch.Tensor | None = None,
    settings: DreamSettings | None = None,
    class_name: str | None = None,
) -> DreamResult:
    """Optimise an image (1, 1, H, W) in [0, 1] to maximise the mean output of ``class_index``.

    ``start``: the image to begin from (model-input space, any size; resized), else smooth noise around
    mid-grey drawn from ``settings.seed`` and the class index."""
    s = settings or DreamSettings()
    s.check()
    size = (int(input_size[0]), int(input_size[1]))
    gen = torch.Generator().manual_seed(int(s.seed) * 1000 + int(class_index))
    if start is None:
        base = (0.5 + 0.1 * torch.randn((1, 1, *size), generator=gen)).clamp(0, 1)
    else:
        base = _resize(start.detach().float().reshape(1, 1, *start.shape[-2:]), size).clamp(0, 1)
    net.eval()
    res = DreamResult(class_index, class_name or str(class_index), image=np.zeros(size, np.float32))
    with torch.no_grad():
        score, prob = class_outputs(_logits(net, base), class_index)
    res.initial_score, res.initial_probability = float(score), float(prob)
    t0 = time.perf_counter()
    sizes = octave_sizes(size, s.octaves, s.octave_scale)
    detail = torch.zeros((1, 1, *sizes[0]))
    x = base
    for octave_size in sizes:
        octave_base = _resize(base, octave_size)
        x = (octave_base + _resize(detail, octave_size)).clamp(0, 1)
        for _ in range(s.steps):
            if time.perf_counter() - t0 > s.time_limit_s:
                res.stopped_early = True
                break
            x.requires_grad_(True)
            dy, dx = (int(v) for v in torch.randint(-s.jitter, s.jitter + 1, (2,), generator=gen)) if s.jitter else (0, 0)
            shifted = torch.roll(_resize(x, size), shifts=(dy, dx), dims=(-2, -1))
            score, _ = class_outputs(_logits(net, shifted), class_index)
            (grad,) = torch.autograd.grad(score, x)
            step = grad / grad.abs().mean().clamp_min(1e-12)
            if s.tv_weight:  # both gradients normalised, so the weight means the same for every model
                (tv,) = torch.autograd.grad(_total_variation(x), x)
                step = step - s.tv_weight * tv / tv.abs().mean().clamp_min(1e-12)
            with torch.no_grad():
                x = x.detach() + s.step_size * step
                x = _gaussian_blur(x, s.blur_sigma).clamp(0, 1)
            res.history.append(float(score.detach()))
            res.steps_run += 1
        detail = x.detach() - octave_base
        if res.stopped_early:
            break
    final = _resize(x.detach(), size).clamp(0, 1)
    with torch.no_grad():
        score, prob = class_outputs(_logits(net, final), class_index)
    res.final_score, res.final_probability = float(score), float(prob)
    res.seconds = round(time.perf_counter() - t0, 2)
    res.image = final[0, 0].numpy().astype(np.float32)
    return res


# --- models, inputs and outputs --------------------------------------------------------------------


def load_explainable(model: str | Path) -> tuple[nn.Module, dict]:
    """(network, info) of a shipped model, checkpoint or run folder that :func:`dream` can explain:
    a 2-D network with one input channel. ``info["kind"]`` is "segmentation" or "classification"."""
    from covidct.models import zoo

    net, info = zoo.load(model)
    name = (info.get("card") or {}).get("name") or info.get("name") or str(model)
    if int(info.get("spatial_dims", 2)) != 2:
        raise ModelError(f"explain: {name} is a 3-D volume model; --dream works on 2-D models")
    in_ch = int((info.get("model") or {}).get("in_channels", 1))
    if in_ch != 1:
        raise ModelError(f"explain: {name} takes {in_ch} input channels (e.g. image + clicks); "
                         "--dream works on single-image models")
    size = tuple(int(v) for v in (info.get("input_size") or (256, 256)))
    net.eval()
    with torch.no_grad():
        out = _logits(net, torch.full((1, 1, *size), 0.5))
    info = dict(info, input_size=list(size), kind="segmentation" if out.ndim == 4 else "classification")
    if not info.get("classes") or len(info["classes"]) != out.shape[1]:
        info["classes"] = [f"class{i}" for i in range(out.shape[1])]
    return net, info


def start_image(path: str | Path, info: dict, slice_index: int | None = None) -> tuple[torch.Tensor, str]:
    """(1, 1, S, S) model-space start image from a slice image or one slice of a volume, and a label for it."""
    from covidct.errors import UnsupportedInput
    from covidct.io import load_ct
    from covidct.models.inference import prepare_slices

    ct = load_ct(path)
    z = ct.n_slices // 2 if slice_index is None else int(slice_index)
    if not 0 <= z < ct.n_slices:
        raise UnsupportedInput(f"--slice {z} is outside {path} (slices 0..{ct.n_slices - 1})")
    x = prepare_slices([ct.array[z]], [bool(ct.is_hu)], info)
    return x, f"{Path(path).name}" + ("" if ct.n_slices == 1 else f" slice {z}")


def select_classes(classes: list[str], wanted: list[str] | None) -> list[int]:
    """Indices of the wanted classes (names or numbers), all by default; ConfigError for unknown ones."""
    if not wanted:
        return list(range(len(classes)))
    out = []
    for w in wanted:
        if w in classes:
            out.append(classes.index(w))
        elif w.isdigit() and int(w) < len(classes):
            out.append(int(w))
        else:
            raise ConfigError(f"--class {w!r}: the model's classes are {', '.join(classes)}")
    return out


def to_u8(image01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(image01, np.float32) * 255.0), 0, 255).astype(np.uint8)


def panel_png(results: list[DreamResult], path: Path, title: str) -> Path:
    """The class images side by side with their names and mean probabilities (like seed 004, Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import textwrap

    import matplotlib.pyplot as plt

    title = textwrap.fill(title, width=int(22 * len(results) + 10))
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.5 + 0.2 * title.count("\n")),
                             squeeze=False, layout="constrained")
    for ax, r in zip(axes[0], results, strict=True):
        ax.imshow(r.image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{r.class_name}\nmean p {r.initial_probability:.2f} → {r.final_probability:.2f}", fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_dream_outputs(results: list[DreamResult], out_dir: str | Path, meta: dict) -> list[Path]:
    """``dream_<class>.png`` per class, ``dream_panel.png`` and ``dream.json``, written as one set
    (staged, then moved into ``out_dir``: an interrupt leaves no half-written set)."""
    from PIL import Image

    from covidct.io.writers import staged_outputs

    out_dir = Path(out_dir)
    names = []
    with staged_outputs(out_dir) as stage:
        for r in results:
            fname = f"dream_{_safe(r.class_name)}.png"
            Image.fromarray(to_u8(r.image), "L").save(stage / fname)
            names.append(fname)
        panel_png(results, stage / "dream_panel.png", meta.get("title", "Deep Dream"))
        names.append("dream_panel.png")
        summary = dict(meta, classes=[r.summary() for r in results])
        (stage / "dream.json").write_text(json.dumps(summary, indent=2) + "\n")
        names.append("dream.json")
    return [out_dir / n for n in names]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "class"
