"""Training loop, losses and configs on tiny synthetic records (CPU, seconds)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from covidct.errors import ConfigError
from covidct.train.config import load_config
from covidct.train.losses import build_loss, median_frequency_weights
from covidct.train.schema import expand_grid


def disk_records(n_cases: int = 6, per_case: int = 4, size: int = 64, seed: int = 0) -> list[dict]:
    """Display-valued slices with a bright disk (the infection label) on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    recs = []
    for c in range(n_cases):
        for k in range(per_case):
            img = rng.normal(60, 10, (size, size)).astype(np.float32)
            lab = np.zeros((size, size), np.uint8)
            if (c + k) % 4:  # some empty slices (negatives)
                cy, cx, r = rng.integers(16, size - 16, 2).tolist() + [int(rng.integers(5, 12))]
                lab = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
                img[lab > 0] = rng.normal(200, 10, int(lab.sum()))
            recs.append({"image": np.clip(img, 0, 255), "is_hu": False, "lungs": None, "infection": lab,
                         "lesions": None, "slice_label": int(lab.any()), "class_label": None,
                         "case": f"c{c}", "id": f"c{c}-{k}", "source": "disks", "group": f"c{c}", "meta": {}})
    return recs


def tiny_config(**over) -> dict:
    cfg = {
        "name": "tiny",
        "task": "infection",
        "data": {"sources": [{"name": "disks"}], "split": {"fractions": [0.5, 0.25, 0.25], "seed": 1}},
        "model": {"name": "unet", "kwargs": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0}},
        "loss": {"name": "dice_ce"},
        "optimizer": {"name": "adam", "lr": 0.01},
        "schedule": {"name": "cosine"},
        "train": {"epochs": 2, "batch_size": 4, "input_size": 64, "steps_per_epoch": 4, "seed": 0,
                  "patience": 5, "save_fp16": False},
        "augment": {"enabled": True, "noise_prob": 0.0, "smooth_prob": 0.0},
        "normalisation": {"clahe_clip": None},
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


def test_median_frequency_weights_hand_set():
    a = np.array([[0, 0, 0, 1]])  # 4 px: c0 3, c1 1
    b = np.array([[0, 2, 2, 2]])  # 4 px: c0 1, c2 3
    w = median_frequency_weights([a, b], 4)
    # freq0 = 4/8, freq1 = 1/4, freq2 = 3/4, class 3 absent -> weight 0; median(0.5, .25, .75) = 0.5
    np.testing.assert_allclose(w, [1.0, 2.0, 2 / 3, 0.0], rtol=1e-6)


def test_median_frequency_weights_seed004_table():
    # seed 004 table 1 (pixel count, image pixel count): reproduce with synthetic "images" of those totals
    freq = np.array([2.4394e7 / 2.6214e7, 1.1965e6 / 2.5166e7, 5.8921e5 / 2.0447e7, 3.4265e4 / 6.5536e6])
    expected = np.median(freq) / freq
    assert expected[0] < 0.05 and expected[3] > 7  # the rare effusion class is weighted up


def test_losses_build_and_run():
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    y = torch.randint(0, 3, (2, 1, 16, 16))
    for name in ("dice", "focal", "dice_ce", "dice_focal", "ce"):
        for weights in (None, [0.2, 1.0, 3.0]):
            loss = build_loss({"name": name, "weights": weights})(logits, y)
            assert torch.isfinite(loss) and loss.requires_grad
    # binary focal loss must have a gradient (MONAI's background exclusion before softmax kills it)
    lg = torch.randn(2, 2, 8, 8, requires_grad=True)
    build_loss({"name": "focal", "include_background": False})(lg, torch.randint(0, 2, (2, 1, 8, 8))).backward()
    assert lg.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="loss.weights"):
        build_loss({"name": "ce", "weights": "median_frequency"})


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"optimizer": {"lr": "fast"}}, "optimizer.lr"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"batchsize": 4}}, "train.batchsize"),
        ({"model": {"name": "vnet"}}, "model.name"),
        ({"schedule": {"name": "linear"}}, "schedule.name"),
        ({"task": "lung"}, "task"),
        ({"data": {"split": {"fractions": [0.5, 0.5]}}}, "data.split.fractions"),
        ({"loss": {"weights": [1.0]}}, "loss.weights"),
        ({"train": {"bf16": "yes"}}, "train.bf16"),
        ({"normalisation": {"window": "lung", "clahe": 1}}, "normalisation.clahe"),
        ({"task": "infection", "augment": {"airless_prob": 0.5}}, "augment.airless_prob"),
        ({"task": "lungs", "augment": {"airless_prob": 0.5, "airless_share": [0.5, 0.2]}}, "augment.airless_share"),
        ({"augment": {"zoom_out_prob": 0.5, "zoom_out_scale": [0.0, 1.0]}}, "augment.zoom_out_scale"),
    ],
)
def test_config_errors_name_the_key(patch, key):
    with pytest.raises(ConfigError) as e:
        load_config(tiny_config(**patch))
    msg = str(e.value)
    assert msg.startswith(key + ":") and "\n" not in msg


def test_config_missing_task_and_yaml(tmp_path):
    d = tiny_config()
    del d["task"]
    with pytest.raises(ConfigError, match="^task: missing"):
        load_config(d)
    p = tmp_path / "c.yaml"
    p.write_text("task: lungs\ndata:\n  sources:\n    - {name: ma2020}\n    - {name: phantom, n_volumes: 2}\n"
                 "optimizer: {lr: 1e-4}\n")
    cfg = load_config(p)
    assert cfg.name == "c" and cfg.optimizer.lr == 1e-4 and cfg.data.sources[1].options == {"n_volumes": 2}


def test_grid_expansion():
    d = tiny_config(grid={"model.name": ["unet", "segnet"], "optimizer.lr": [0.01, 0.001]})
    v = expand_grid(d)
    assert len(v) == 4 and v[1][0] == "unet_lr-0.001" and v[1][1]["optimizer"]["lr"] == 0.001
    assert all("grid" not in c for _, c in v)
    v2 = expand_grid(tiny_config(grid=[{"model.name": "segnet", "optimizer.lr": 1e-3}, {"task": "lesions"}]))
    assert [c["model"]["name"] for _, c in v2] == ["segnet", "unet"] and v2[1][1]["task"] == "lesions"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from covidct.train import train

    run = tmp_path_factory.mktemp("runs") / "tiny"
    out = train(tiny_config(), run, records=disk_records(), verbose=False)
    return out


def test_training_writes_run_folder_and_loss_falls(trained_run):
    for f in ("config.resolved.yaml", "split.json", "best.pt", "last.pt", "log.csv", "metrics.json", "card.json",
              "test/metrics.md", "test/metrics.csv", "test/heatmap.png", "test/confusion.png"):
        assert (trained_run / f).is_file(), f
    rows = list(csv.DictReader(open(trained_run / "log.csv")))
    assert len(rows) == 2
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    split = json.loads((trained_run / "split.json").read_text())
    parts = [set(split["info"]["cases"][k]) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])  # case-level
    m = json.loads((trained_run / "metrics.json").read_text())
    assert m["epochs_run"] == 2 and "test" in m and 0 <= m["test"]["foreground_dice"] <= 1
    # the resolved config re-loads
    assert load_config(trained_run / "config.resolved.yaml").model.name == "unet"


def test_resume_continues_and_refuses_overwrite(trained_run):
    from covidct.train import train

    with pytest.raises(ConfigError, match="output.run_dir"):
        train(tiny_config(), trained_run, records=disk_records(), verbose=False)
    cfg = tiny_config(train={"epochs": 3})
    train(cfg, trained_run, resume=True, records=disk_records(), verbose=False)
    rows = list(csv.DictReader(open(trained_run / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]


def test_trained_checkpoint_reloads(trained_run):
    from covidct.models import load_model, verify_card
    from covidct.models.inference import predict_slices

    verify_card(trained_run / "best.pt", trained_run / "card.json")
    model, info = load_model(trained_run / "best.pt")
    assert info["task"] == "infection" and info["classes"] == ["background", "infection"]
    imgs = [r["image"] for r in disk_records(1, 2)] + [np.full((50, 70), 100, np.float32)]
    probs = predict_slices(model, info, imgs, False, batch_size=2)
    assert [p.shape for p in probs] == [(2, 64, 64), (2, 64, 64), (2, 50, 70)]
    np.testing.assert_allclose(probs[2].sum(0), 1.0, atol=1e-5)


def test_init_from_loads_weights_for_fine_tuning(tmp_path):
    from covidct.models import build_model, save_checkpoint
    from covidct.train.runs import init_weights

    kw = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
    src = build_model("unet", 1, 2, **kw)
    path = save_checkpoint(tmp_path / "m.pt", src, name="unet", kwargs=kw, in_channels=1, out_channels=2,
                           task="infection", classes=["background", "infection"], input_size=(32, 32),
                           normalisation={})
    dst = build_model("unet", 1, 2, **kw)
    init_weights(dst, str(path))
    for (name, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-3), name  # checkpoints store fp16
    with pytest.raises(ConfigError, match="does not fit"):
        init_weights(build_model("unet", 1, 2, channels=[8, 16], strides=[2], num_res_units=0), str(path))


def test_config_overrides_from_the_command_line():
    from covidct.errors import ConfigError
    from covidct.train.schema import apply_overrides

    raw = {"name": "x", "train": {"epochs": 3}, "model": {"name": "unet"}}
    out = apply_overrides(raw, ["train.max_minutes=8", "model.kwargs.channels=[8, 16]", "optimizer.lr=3e-4",
                                "schedule.name=cosine"])
    assert out["train"] == {"epochs": 3, "max_minutes": 8}
    assert out["model"] == {"name": "unet", "kwargs": {"channels": [8, 16]}}
    assert out["optimizer"]["lr"] == 3e-4 and out["schedule"]["name"] == "cosine"
    assert raw["train"] == {"epochs": 3}  # the input is not changed
    for bad in ("train.epochs", "=3", "train..epochs=2", "model.name.x=1"):
        with pytest.raises(ConfigError):
            apply_overrides(raw, [bad])


def test_grid_variant_filter_and_overrides(tmp_path):
    from covidct.errors import ConfigError
    from covidct.train import train

    cfg = tiny_config(grid={"optimizer.lr": [0.01, 0.001]}, train={"epochs": 1, "steps_per_epoch": 2})
    parent = train(cfg, tmp_path / "g", records=disk_records(), verbose=False, variants=["*0.001"],
                   overrides=["train.batch_size=2"])
    assert sorted(p.name for p in parent.iterdir() if p.is_dir()) == ["lr-0.001"]
    assert "batch_size: 2" in (parent / "lr-0.001" / "config.resolved.yaml").read_text()
    with pytest.raises(ConfigError, match="no grid variant matches.*lr-0.01"):
        train(cfg, tmp_path / "h", records=disk_records(), verbose=False, variants=["segnet*"])


def test_every_shipped_config_validates():
    """The experiment configs in configs/ (and every grid variant) pass the schema check."""
    from pathlib import Path

    from covidct.train.interactive import InteractiveConfig
    from covidct.train.schema import build, load_raw
    from covidct.train.volumes import load_seg3d_config

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(files) >= 15
    for f in files:
        raw = load_raw(f)
        kind = raw.get("kind")
        if kind == "seg3d":
            load_seg3d_config(raw)
        elif kind == "interactive":
            build(InteractiveConfig, raw, "")
        else:
            for _, variant in expand_grid(raw):
                load_config(variant)


def test_split_by_explicit_cases():
    from covidct.train.datasets import split_by_cases

    recs = disk_records(n_cases=3, per_case=2)
    sp = split_by_cases(recs, {"train": ["c0", "c1"], "val": ["c2"], "test": []})
    assert sp == {"train": ["c0-0", "c0-1", "c1-0", "c1-1"], "val": ["c2-0", "c2-1"], "test": []}
    with pytest.raises(ConfigError, match="^data.split.cases: case 'c2'"):  # an unlisted case is not dropped silently
        split_by_cases(recs, {"train": ["c0", "c1"], "val": [], "test": []})
    with pytest.raises(ConfigError, match="in both train and val"):
        split_by_cases(recs, {"train": ["c0", "c1", "c2"], "val": ["c2"], "test": []})
    with pytest.raises(ConfigError, match="^data.split.cases: unknown part 'holdout'"):
        load_config(tiny_config(data={"split": {"cases": {"holdout": ["c0"]}}}))


def test_grid_and_set_index_lists_and_sources_repeat():
    from covidct.train.datasets import load_records, register_source
    from covidct.train.schema import apply_overrides

    raw = tiny_config(data={"sources": [{"name": "disks"}, {"name": "disks", "repeat": 3, "n_cases": 1}]})
    v = expand_grid({**raw, "grid": {"data.sources.1.n_cases": [1, 2]}})
    assert [n for n, _ in v] == ["n_cases-1", "n_cases-2"] and v[1][1]["data"]["sources"][1]["n_cases"] == 2
    with pytest.raises(ConfigError, match="not an index"):
        expand_grid({**raw, "grid": {"data.sources.5.n_cases": [1]}})
    assert apply_overrides(raw, ["data.sources.0.limit=2"])["data"]["sources"][0]["limit"] == 2
    register_source("disks1", lambda **kw: disk_records(n_cases=1, per_case=2))
    cfg = load_config(tiny_config(data={"sources": [{"name": "disks1", "repeat": 3}]}))
    recs = load_records(cfg.data.sources)
    assert [r["id"] for r in recs] == ["c0-0", "c0-0#1", "c0-0#2", "c0-1", "c0-1#1", "c0-1#2"]
    assert {r["case"] for r in recs} == {"c0"}  # copies stay in their case (split-safe)
    # the same slices from two sources (full slices and crops of them): prefixed ids, the same case and group
    with pytest.raises(ConfigError, match="occurs twice"):
        load_records(load_config(tiny_config(data={"sources": [{"name": "disks1"}, {"name": "disks1"}]})).data.sources)
    cfg = load_config(tiny_config(data={"sources": [{"name": "disks1"}, {"name": "disks1", "id_prefix": "crop-"}]}))
    recs = load_records(cfg.data.sources)
    assert [r["id"] for r in recs] == ["c0-0", "c0-1", "crop-c0-0", "crop-c0-1"]
    assert {r["case"] for r in recs} == {"c0"} and len({str(r.get("group")) for r in recs}) == 1


def test_configured_split_file_cases_fractions(tmp_path):
    # one place decides the split for 2-D, 3-D and refinement training
    from covidct.train.config import SplitConfig
    from covidct.train.datasets import configured_split

    recs = disk_records(n_cases=4, per_case=1)
    by_cases = configured_split(recs, SplitConfig(cases={"train": ["c0", "c1"], "val": ["c2"], "test": ["c3"]}))
    assert by_cases == {"train": ["c0-0", "c1-0"], "val": ["c2-0"], "test": ["c3-0"]}
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"splits": by_cases}))
    assert configured_split(recs, SplitConfig(file=str(f))) == by_cases
    with pytest.raises(ConfigError, match="^data.split.file: not found"):
        configured_split(recs, SplitConfig(file=str(tmp_path / "missing.json")))
    by_fractions = configured_split(recs, SplitConfig(fractions=[0.5, 0.25, 0.25], seed=0))
    assert sorted(sum(by_fractions.values(), [])) == sorted(r["id"] for r in recs)


def test_failed_run_leaves_no_run_folder(tmp_path):
    from covidct.train import train

    bad = tiny_config(data={"split": {"cases": {"train": ["c0"], "val": [], "test": []}}})
    with pytest.raises(ConfigError, match="is in no part"):
        train(bad, tmp_path / "new", records=disk_records(), verbose=False)
    assert not (tmp_path / "new").exists()  # not a folder holding only config.resolved.yaml
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError):
        train(bad, tmp_path / "mine", records=disk_records(), verbose=False)
    assert (tmp_path / "mine").is_dir()  # a folder that was already there is the user's: kept


def test_epoch_bookkeeping_shared_by_the_trainers(tmp_path):
    """log_epoch writes the CSV row and the TensorBoard scalars; stop_reason: patience first, then the budget."""
    from covidct.train.config import TrainConfig
    from covidct.train.runs import log_epoch, open_run_logs, stop_reason

    class Writer:
        def __init__(self):
            self.calls, self.flushed = [], 0

        def add_scalar(self, tag, value, step):
            self.calls.append((tag, value, step))

        def flush(self):
            self.flushed += 1

    writer, log = open_run_logs(tmp_path, tensorboard=False, append=False)
    assert writer is None
    fake = Writer()
    log_epoch(log, fake, {"epoch": 3, "train_loss": 0.5}, {"loss/train": 0.5, "lr": 1e-3})
    log_epoch(log, None, {"epoch": 4, "train_loss": 0.4}, {"loss/train": 0.4})
    assert (tmp_path / "log.csv").read_text().splitlines() == ["epoch,train_loss", "3,0.5", "4,0.4"]
    assert fake.calls == [("loss/train", 0.5, 3), ("lr", 1e-3, 3)] and fake.flushed == 1
    t = TrainConfig(patience=2, max_minutes=1.0)
    assert stop_reason(t, 1, 30.0, "val Dice") is None
    assert stop_reason(t, 2, 90.0, "val Dice") == "early stopping (no val Dice gain for 2 epochs)"
    assert stop_reason(t, 0, 60.0, "val Dice") == "time budget"
    assert stop_reason(TrainConfig(patience=None, max_minutes=None), 99, 1e9, "x") is None


def test_fit_is_one_loop_for_every_task(tmp_path):
    """The shared loop: best model on a gain, patience counted over validated epochs only (an epoch whose
    score is None is not judged), the early stop, last.pt to resume from, a non-finite loss refused."""
    import torch

    from covidct.train.loop import LoopSettings, Task, Validation, fit
    from covidct.train.runs import Progress, restore_training_state

    torch.manual_seed(0)
    x = torch.randn(16, 2)
    y = x @ torch.tensor([[1.0], [-2.0]])

    class Toy(Task):
        def __init__(self, scores):
            self.scores, self.saved, self.reports, self.steps = scores, [], [], 0

        def batches(self, epoch):
            return [(x[:8], y[:8]), (x[8:], y[8:])]

        def loss(self, model, batch):
            return ((model(batch[0]) - batch[1]) ** 2).mean()

        def after_step(self, loss):
            self.steps += 1

        def validate(self, model, epoch, train_loss):
            return Validation(self.scores[epoch], {"epoch": epoch})

        def save_best(self, model, metrics):
            self.saved.append(metrics["epoch"])

        def report(self, e):
            self.reports.append((e.epoch, e.improved, e.train_loss))

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    task = Toy([0.1, None, 0.3, 0.2, None, 0.25, 0.9])
    p = fit(model, opt, None, task, LoopSettings(epochs=7, patience=2), Progress(), tmp_path / "last.pt", verbose=False)
    assert task.saved == [0, 2] and (p.best, p.best_epoch, p.best_metrics) == (0.3, 2, {"epoch": 2})
    assert p.stopped == "early stopping (no val Dice gain for 2 epochs)" and p.epochs_run == 6
    assert task.steps == 12 and [r[1] for r in task.reports] == [True, False, True, False, False, False]
    assert task.reports[-1][2] < task.reports[0][2]  # it trained
    back = restore_training_state(tmp_path / "last.pt", torch.nn.Linear(2, 1),
                                  torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.05), None)
    assert (back.start_epoch, back.best, back.best_epoch, back.bad) == (6, 0.3, 2, 2)

    class Diverging(Toy):
        def loss(self, model, batch):
            return model(batch[0]).sum() * float("nan")

    with pytest.raises(FloatingPointError, match="epoch 1"):
        fit(model, opt, None, Diverging([0.0]), LoopSettings(epochs=1), Progress(), None, verbose=False)


def test_phantom_source_with_consolidated_lobes():
    """The ``lobar`` phantom source: each volume's lesions are confluent consolidation of one lung's zone, all of
    it inside the lung label (solid lung the lung model must keep)."""
    from covidct.labels import CONSOLIDATION
    from covidct.train.datasets import phantom_records

    recs = phantom_records(n_volumes=2, shape=(16, 96, 96), margin_slices=0, seed=3, lesion_burden=(0.1, 0.12),
                           lobar=True)
    for case in {r["case"] for r in recs}:
        les = np.stack([r["lesions"] for r in recs if r["case"] == case])
        lungs = np.stack([r["lungs"] for r in recs if r["case"] == case])
        assert (les > 0).any() and set(np.unique(les)) <= {0, CONSOLIDATION}
        assert lungs[les > 0].all()
        cols = np.flatnonzero((les > 0).any(axis=(0, 1)))
        assert cols.max() < 48 or cols.min() >= 48  # one side only


def test_airless_lung_augmentation_paints_lung_keeps_label():
    """``augment.airless_prob`` (lungs task): part of the labelled lung turns to the slice's soft-tissue density,
    posterior (dependent) or patchy, never outside the lung; the label stays; probability 0 changes nothing."""
    from covidct.train.airless import RandAirlessLungd

    rng = np.random.default_rng(0)
    image = np.full((96, 96), 0.75, np.float32)  # soft tissue
    label = np.zeros((96, 96), np.int64)
    label[20:80, 10:42] = 1
    label[20:80, 54:86] = 1
    image[label > 0] = 0.25 + rng.normal(0, 0.02, int(label.sum())).astype(np.float32)  # aerated lung
    image[0:6] = 0.0  # air outside the body
    data = {"image": torch.as_tensor(image)[None], "label": torch.as_tensor(label)[None]}
    assert torch.equal(RandAirlessLungd(prob=0.0)(data)["image"], data["image"])
    painted_any, dependent = 0, 0
    for seed in range(12):
        t = RandAirlessLungd(prob=1.0, share=(0.2, 0.3))
        t.set_random_state(seed)
        out = t(data)
        assert torch.equal(out["label"], data["label"])
        new = out["image"][0].numpy()
        changed = np.abs(new - image) > 0.15
        assert not (changed & (label == 0)).any()  # never outside the lung
        share = changed[label > 0].mean()
        assert 0.1 < share < 0.6  # about the drawn share; the irregular front moves it
        assert abs(float(np.median(new[changed])) - 0.75) < 0.1  # the slice's own soft-tissue level
        painted_any += 1
        rows = np.flatnonzero(changed.any(axis=1))
        dependent += rows.min() > 55  # a band along the posterior (bottom) edge only
    assert painted_any == 12 and 0 < dependent < 12  # both kinds are drawn


def test_resolved_config_keeps_each_sources_repeat_and_id_prefix(tmp_path):
    """config.resolved.yaml (and the model card's config) round-trips: a source's ``repeat`` and ``id_prefix``
    survive, so a run (or the ONNX check of its validation split) can be rebuilt from it."""
    from pathlib import Path

    from covidct.train.config import config_to_dict, dump_config, load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "infection_infnet.yaml")
    crops = [s for s in cfg.data.sources if s.name == "medseg-infnet"][0]
    assert (crops.id_prefix, crops.repeat) == ("crop-", 6)
    again = load_config(dump_config(cfg, tmp_path / "resolved.yaml"))
    assert config_to_dict(again) == config_to_dict(cfg)
    assert [(s.id_prefix, s.repeat) for s in again.data.sources] == [(s.id_prefix, s.repeat) for s in cfg.data.sources]
