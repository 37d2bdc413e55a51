"""``covidct explain``: pictures of what a trained model responds to (Deep Dream class images)."""

from __future__ import annotations

from pathlib import Path

import typer

from covidct.errors import ConfigError


def register(app: typer.Typer) -> None:
    @app.command()
    def explain(
        model: str = typer.Argument(..., help="Shipped model name (e.g. infection, lesions, covid-vs-noncovid), "
                                    "a checkpoint (.pt) or a run folder from `covidct train`."),
        output: Path = typer.Option(..., "-o", "--output", help="Folder for dream_<class>.png, dream_panel.png "
                                    "and dream.json (created)."),
        dream: bool = typer.Option(False, "--dream", help="Deep Dream: per class, an image optimised by gradient "
                                   "ascent to maximise that class's mean output (the only method so far)."),
        start: Path = typer.Option(None, "--from", metavar="IMAGE", help="Start from this slice image (or a "
                                   "volume's slice, see --slice) instead of noise."),
        slice_index: int = typer.Option(None, "--slice", metavar="Z", help="With a volume for --from: the slice "
                                        "index (default: the middle one)."),
        classes: list[str] = typer.Option(None, "--class", metavar="NAME", help="Only this class (name or index; "
                                          "repeatable). Default: every class."),
        seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same images (unless --time-limit "
                                 "cuts a class short; dream.json says so)."),
        steps: int = typer.Option(40, "--steps", help="Gradient steps per octave."),
        octaves: int = typer.Option(3, "--octaves", help="Number of scales, coarse to fine."),
        octave_scale: float = typer.Option(1.6, "--octave-scale", help="Size ratio between octaves."),
        step_size: float = typer.Option(0.02, "--step-size", help="Step per iteration in model-input units "
                                        "(the image lives in [0, 1])."),
        jitter: int = typer.Option(8, "--jitter", help="Random shift before each step, in pixels (0 = none)."),
        blur: float = typer.Option(0.5, "--blur", help="Gaussian smoothing after each step, sigma in pixels "
                                   "(0 = none)."),
        tv: float = typer.Option(0.3, "--tv", help="Total-variation (smoothness) weight, relative to the "
                                 "class objective."),
        time_limit: float = typer.Option(60.0, "--time-limit", metavar="SECONDS", help="Stop a class after "
                                         "this many seconds of optimisation."),
    ) -> None:
        """Show what a trained 2-D segmenter or classifier looks for. With --dream: for each class, an image
        optimised from noise (or --from a slice) with jitter, multi-scale octaves and smoothing to maximise the
        class's mean output; writes one PNG per class, a side-by-side panel and dream.json (scores, mean
        probabilities, steps, seconds).

        Example: covidct explain infection --dream -o dream/   (seed 004's Fig. 4 for covidct's model)"""
        from covidct import explain as ex

        if not dream:
            raise ConfigError("say what to explain: --dream (the only method so far)")
        settings = ex.DreamSettings(octaves=octaves, octave_scale=octave_scale, steps=steps, step_size=step_size,
                                 jitter=jitter, blur_sigma=blur, tv_weight=tv, time_limit_s=time_limit, seed=seed)
        settings.check()
        if output.exists() and not output.is_dir():
            raise ConfigError(f"-o {output}: exists and is not a folder")
        net, info = ex.load_explainable(model)
        wanted = ex.select_classes(list(info["classes"]), classes)
        x0, start_label = (None, "noise") if start is None else ex.start_image(start, info, slice_index)
        size = tuple(info["input_size"])
        results = []
        for c in wanted:
            r = ex.dream(net, c, size, start=x0, settings=settings, class_name=info["classes"][c])
            note = " (time limit reached)" if r.stopped_early else ""
            typer.echo(f"{r.class_name}: mean logit {r.initial_score:.3g} -> {r.final_score:.3g}, mean probability "
                       f"{r.initial_probability:.3f} -> {r.final_probability:.3f}, {r.steps_run} steps, "
                       f"{r.seconds:.1f} s{note}", err=True)
            results.append(r)
        name = (info.get("card") or {}).get("name") or info.get("name") or model
        meta = {"model": str(model), "model_name": name, "model_version": info.get("version"),
                "kind": info["kind"], "input_size": list(size), "start": start_label,
                "settings": settings.__dict__, "title": f"Deep Dream: {name} ({info['kind']}, start: {start_label})"}
        paths = ex.write_dream_outputs(results, output, meta)
        for p in paths:
            typer.echo(str(p))
