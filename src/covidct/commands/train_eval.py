"""``covidct train`` and ``covidct evaluate``: the one training entry point and its evaluation."""

from __future__ import annotations

from pathlib import Path

import typer

from covidct.errors import ConfigError


def parse_data_spec(spec: str) -> tuple[str, dict]:
    """``SOURCE[:SPLIT][,key=value...]`` → (source name, keyword arguments for covidct.data.load_source).

    Examples: ``medseg-infnet:test``, ``ma2020``, ``medseg-infnet:test,multiclass=true``,
    ``run:runs/lungs_v1:val`` (the validation/test cases recorded in a run's split.json).
    """
    head, *opts = spec.split(",")
    kw: dict = {}
    for opt in opts:
        if "=" not in opt:
            raise ConfigError(f"--data option {opt!r} is not key=value")
        k, v = opt.split("=", 1)
        kw[k] = {"true": True, "false": False}.get(v.lower(), v)
    name, _, split = head.partition(":")
    if split:
        kw["split"] = split
    return name, kw


def load_eval_records(spec: str) -> list[dict]:
    """Records for ``covidct evaluate --data``; a ``run:`` spec takes a part of that run's saved split."""
    name, kw = parse_data_spec(spec)
    if name == "run":
        run_dir, _, part = kw.pop("split", "").rpartition(":")
        return _records_of_run_split(Path(run_dir), part or "test")
    from covidct.data import load_source

    return load_source(name, **kw)


def _records_of_run_split(run_dir: Path, part: str) -> list[dict]:
    import json

    from covidct.train import datasets as ds
    from covidct.train.config import load_config

    cfg = load_config(run_dir / "config.resolved.yaml")
    split = json.loads((run_dir / "split.json").read_text())
    ids = set(split.get("splits", split).get(part) or [])
    if not ids:
        raise ConfigError(f"{run_dir}/split.json has no part {part!r}")
    records = ds.load_records(cfg.data.sources)
    return [r for r in records if r["id"] in ids]


def _hint_how_to_resume(config: Path, run_dir: Path | None, overrides: list[str] | None, variants: list[str] | None) -> None:
    """After Ctrl-C, where a checkpoint was kept: the command that continues the run."""
    import shlex

    from covidct.interrupts import set_interrupt_hint
    from covidct.train.loop import run_folder
    from covidct.train.schema import apply_overrides, load_raw

    try:
        target = run_folder(apply_overrides(load_raw(config), overrides), run_dir)
    except Exception:  # noqa: BLE001 - only a hint; the interrupt is what matters
        return
    if not any(target.rglob("last.pt")):
        return
    words = ["covidct", "train", str(config), "--run-dir", str(target)]
    for item in overrides or []:
        words += ["--set", item]
    for pattern in variants or []:
        words += ["--variant", pattern]
    set_interrupt_hint("continue the run with: " + shlex.join(words + ["--resume"]))


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        config: Path = typer.Argument(..., help="Experiment config (YAML), e.g. configs/lungs.yaml; see configs/README.md."),
        run_dir: Path = typer.Option(None, "--run-dir", help="Where to write the run (default: the config's output.run_dir)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --run-dir from its last.pt."),
        overrides: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE",
                                            help="Override a config value (dotted key, YAML value), repeatable: "
                                            "--set train.max_minutes=8 --set optimizer.lr=3e-4. Recorded in "
                                            "the run's config.resolved.yaml."),
        variant: list[str] = typer.Option(None, "--variant", metavar="PATTERN",
                                          help="Run only the grid variants whose name matches this glob "
                                          "(repeatable), e.g. --variant '*seed-0'."),
    ) -> None:
        """Train a model from a config: writes config.resolved.yaml, split.json, best.pt, log.csv, TensorBoard
        logs, metrics.json and a model card into the run folder. A config with a grid: runs every variant.

        Example, a paper's grid on a shortened CPU schedule:
        covidct train configs/seed004_binary.yaml --set train.max_minutes=3 --variant '*seed-0'"""
        from covidct.train import train as run_training

        if not config.is_file():
            raise ConfigError(f"{config}: no such config file")
        try:
            out = run_training(config, run_dir, resume=resume, overrides=overrides, variants=variant)
        except KeyboardInterrupt:
            _hint_how_to_resume(config, run_dir, overrides, variant)
            raise
        typer.echo(f"run folder: {out}")

    @app.command()
    def evaluate(
        model: str = typer.Argument(..., help="A run folder, a checkpoint (.pt) or a shipped model name."),
        data: str = typer.Option(..., "--data", help="SOURCE[:SPLIT][,key=value]: e.g. medseg-infnet:test, ma2020, or run:RUN_DIR:test."),
        output: Path = typer.Option(..., "-o", "--output", help="Folder for metrics.md, metrics.csv, per_image.csv and figures."),
        task: str = typer.Option(None, "--task", help="lungs, infection or lesions (default: the model's task)."),
        hd95: bool = typer.Option(False, "--hd95", help="Also compute the 95 % Hausdorff distance (slower)."),
        crop_model: bool = typer.Option(True, "--crop-model/--no-crop-model", help="Images cut tight around their "
                                        "lungs are read by the model's crop version where its card names one, as "
                                        "`covidct segment` reads them; --no-crop-model: every image by the model."),
    ) -> None:
        """Score a segmentation model: per-class Dice, IoU, sensitivity, specificity, precision, F1, G-mean, F2
        (mean ± std over images), global accuracy, Inf-Net's mean Dice over 256 thresholds, and figures."""
        import json

        from covidct.evaluate import evaluate as run_eval
        from covidct.models import runtime, zoo

        weights, card = zoo.resolve_model_path(model)
        crops = runtime.crops_model_name(json.loads(card.read_text())) if crop_model and card else None
        records = load_eval_records(data)
        result = run_eval(weights, records, task, output, with_hd95=hd95, crops_model=crops)
        if crops and result.get("read_by_crops_model"):
            typer.echo(f"{len(result['read_by_crops_model'])} of {result['n_images']} images are cut tight around "
                       f"their lungs and were read by '{crops}' (--no-crop-model: all by the model itself)")
        typer.echo((output / "metrics.md").read_text() if (output / "metrics.md").exists() else str(result))
