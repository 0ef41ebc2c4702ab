"""`ierf bench local` / `ierf bench attack`: tables, resume, data sources (paper Sec. IV-B)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ierf
import ierf.bench.data
from ierf.bench.tables import Table, read_csv
from ierf.cli import main

METRICS = ["Poi.", "Att.", "Spa.", "Fid.", "Sta."]
ACTIVATIONS = ["ReLU", "ELU", "LeakyReLU", "Swish", "GELU", "Tanh"]  # Table II: fidelity each
DIRECTIONS = {"Poi.": "higher", "Att.": "higher", "Spa.": "higher", "Fid.": "higher",
              "Sta.": "lower", "GPG": "higher", "SSIM": "higher", "PCC": "higher",
              **dict.fromkeys(ACTIVATIONS, "higher")}


def bench(tmp_path, *argv: str, name: str = "out") -> tuple[int, str]:
    out = tmp_path / name
    code = main(["bench", *argv, "--out", str(out), "--no-progress"])
    return code, str(out)


def markdown_cells(path) -> tuple[list[str], dict[str, list[str]]]:
    """Header columns (arrows stripped) and the raw cell strings per row of table.md."""
    lines = [ln for ln in Path(path).read_text().splitlines() if ln.startswith("|")]
    header = [h.strip().rsplit(" ", 1)[0] for h in lines[0].strip("|").split(" | ")[1:]]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip().strip("|").split(" | ")]
        rows[cells[0]] = cells[1:]
    return header, rows


def check_table(out: str, methods: list[str], columns: list[str]) -> dict[str, dict[str, float]]:
    """Every method × column present, Markdown = CSV to 3 decimals, bold = best per column."""
    header, rows = markdown_cells(f"{out}/table.md")
    assert header == columns and list(rows) == methods
    values = read_csv(f"{out}/table.csv")
    assert list(values) == methods
    for c, col in enumerate(columns):
        means = np.array([values[m][col] for m in methods])
        best = np.nanmax(means) if DIRECTIONS[col] == "higher" else np.nanmin(means)
        for m, mean in zip(methods, means):
            cell = rows[m][c]
            number = re.match(r"\**(-?\d+\.\d+)(?: ± (\d+\.\d+))?", cell)
            assert number, cell
            assert float(number[1]) == pytest.approx(round(mean, 3), abs=1e-9)
            if number[2] is not None:
                assert float(number[2]) == pytest.approx(round(values[m][f"{col} se"], 3),
                                                          abs=1e-9)
            assert cell.startswith("**") == (round(mean, 3) == round(best, 3)), (col, m, cell)
    with Image.open(f"{out}/figure.png") as im:
        assert im.format == "PNG"
    return values


def test_quick_main_table_on_the_synthetic_benchmark(tmp_path, capsys):
    code, out = bench(tmp_path, "local", "--quick")
    assert code == 0
    assert "| srd |" in capsys.readouterr().out
    methods = ["saliency", "grad-x-input", "gradcam", "srd"]
    values = check_table(out, methods, METRICS)
    # ground truth: SRD's positive evidence lies on the class-determining parts, the
    # gradient's does not (0.917 vs 0.307 measured on the full set)
    assert values["srd"]["Att."] > values["saliency"]["Att."] + 0.3
    assert all(values[m]["Poi. n"] == 8 for m in methods)


def test_quick_activation_table(tmp_path):
    code, out = bench(tmp_path, "local", "--table", "activations", "--quick", "--n", "4",
                      "--methods", "grad-x-input,srd")
    assert code == 0
    values = check_table(out, ["grad-x-input", "srd"], ACTIVATIONS)
    assert all(-1 <= v <= 1 for m in values.values() for k, v in m.items()
               if not k.endswith((" se", " n")))


def test_quick_srd_ablation_table(tmp_path):
    code, out = bench(tmp_path, "local", "--table", "srd-ablation", "--quick", "--n", "4")
    assert code == 0
    values = check_table(out, ["raw", "mean", "clamped mean"], METRICS)
    # the variants are different maps: raw Φ is not class-centred
    assert values["raw"]["Fid."] != values["clamped mean"]["Fid."]


def test_grid_pointing_game_on_photos_with_efficientnet(tmp_path):
    code, out = bench(tmp_path, "local", "--data", "photos", "--quick", "--n", "4",
                      "--methods", "gradcam,srd")
    assert code == 0
    values = check_table(out, ["gradcam", "srd"], ["GPG", "Spa.", "Fid.", "Sta."])
    # a uniform map scores 1/4; Grad-CAM on a real model finds the target cell
    assert values["gradcam"]["GPG"] > 0.4


def test_photo_grids_hold_four_confident_photos_of_distinct_classes(lite0):
    data = ierf.bench.data.PhotoGrids(lite0, n=6, seed=1)
    assert len({p.label for p in data.photos}) == len(data.photos) >= 4
    assert all(p.prob >= 0.5 for p in data.photos)
    batch = data.batch(0, 6)
    assert batch.x.shape == (6, 3, 224, 224) and batch.mask.shape == (6, 224, 224)
    assert torch.all(batch.mask.float().mean((1, 2)) == 0.25)  # one cell of four
    for (order, cell), y, m in zip(data.layout, batch.y, batch.mask):
        assert len(set(order.tolist())) == 4 and int(y) == data.photos[order[cell]].label
        r, c = divmod(cell, 2)
        assert m[r * 112 + 56, c * 112 + 56]  # the mask is the target's cell


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    argv = ["local", "--quick", "--n", "4", "--batch-size", "2", "--methods", "saliency,srd"]
    assert bench(tmp_path, *argv, name="whole")[0] == 0

    calls = {"n": 0}
    real_to = ierf.bench.data.Batch.to

    def killed_after_first_batch(self, device):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real_to(self, device)

    monkeypatch.setattr(ierf.bench.data.Batch, "to", killed_after_first_batch)
    with pytest.raises(RuntimeError, match="killed"):
        bench(tmp_path, *argv, name="resumed")
    db = tmp_path / "resumed" / "results.sqlite"
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 5
    monkeypatch.setattr(ierf.bench.data.Batch, "to", real_to)
    assert bench(tmp_path, *argv, name="resumed")[0] == 0
    rows = sqlite3.connect(db).execute("SELECT model, method, batch, metric FROM scores").fetchall()
    assert len(rows) == len(set(rows)) == 2 * 2 * 5  # methods × batches × metrics, no duplicates
    assert read_csv(tmp_path / "resumed" / "table.csv") == read_csv(tmp_path / "whole" / "table.csv")


def test_resuming_with_other_settings_is_refused(tmp_path, capsys):
    argv = ["local", "--quick", "--n", "2", "--methods", "saliency"]
    assert bench(tmp_path, *argv)[0] == 0
    assert bench(tmp_path, *argv[:-4], "--n", "3", "--methods", "saliency")[0] == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "n: stored 2, now 3" in err


def test_empty_folder_and_missing_masks_are_clear_errors(tmp_path, capsys):
    (tmp_path / "data" / "images").mkdir(parents=True)
    argv = ["local", "--quick", "--model", "toy-resnet", "--data", str(tmp_path / "data")]
    assert bench(tmp_path, *argv)[0] == 2
    assert "no image files" in capsys.readouterr().err
    Image.new("RGB", (64, 64)).save(tmp_path / "data" / "images" / "a.png")
    assert bench(tmp_path, *argv)[0] == 2
    err = capsys.readouterr().err
    assert "no mask" in err and "a.png" in err
    assert bench(tmp_path, "local", "--data", str(tmp_path / "nowhere"))[0] == 2
    assert "existing folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written for bad input


@pytest.mark.parametrize("argv, message", [
    (["--table", "activations", "--model", "toy-vgg"], "activation variants"),
    (["--table", "srd-ablation", "--methods", "srd"], "omit --methods"),
    (["--methods", "srd,gradcamm"], "unknown method"),
    (["--data", "photos", "--model", "toy-resnet"], "ImageNet classifier"),
])
def test_bad_options_exit_2_with_a_message(tmp_path, capsys, argv, message):
    assert bench(tmp_path, "local", "--quick", *argv)[0] == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_folder_with_masks_scores_like_the_synthetic_benchmark(tmp_path):
    """The same images written as PNG files with their part masks and labels give the same
    localisation scores as the built-in synthetic data (up to 8-bit rounding)."""
    from ierf.data.synthetic import generate

    data = generate(4, seed=0, split="test")
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = []
    for i, (img, mask, y) in enumerate(zip(data.images, data.parts_mask, data.labels)):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            root / "images" / f"im{i}.png")
        Image.fromarray(mask.numpy().astype(np.uint8) * 255).save(root / "masks" / f"im{i}.png")
        lines.append(f"im{i},{int(y)}")
    (root / "targets.csv").write_text("\n".join(lines) + "\n")
    argv = ["local", "--quick", "--n", "4", "--methods", "saliency,srd"]
    assert bench(tmp_path, *argv, "--data", str(root), "--model", "toy-resnet", name="f")[0] == 0
    assert bench(tmp_path, *argv, name="s")[0] == 0
    folder, synthetic = read_csv(tmp_path / "f" / "table.csv"), read_csv(tmp_path / "s" / "table.csv")
    for m in ("saliency", "srd"):
        assert folder[m]["Att."] == pytest.approx(synthetic[m]["Att."], abs=0.02)
        assert folder[m]["Poi."] == synthetic[m]["Poi."]


def test_quick_attack_srd_is_harder_to_manipulate_than_the_gradient(tmp_path):
    code, out = bench(tmp_path, "attack", "--quick", "--methods", "gradient,srd")
    assert code == 0
    values = check_table(out, ["gradient", "srd"], ["SSIM", "PCC"])
    assert values["srd"]["PCC"] > values["gradient"]["PCC"]  # Fig. 4 (bottom)
    assert (tmp_path / "out" / "maps" / "srd.pt").is_file()


def test_attack_explainers_are_the_registry_methods_and_differentiable():
    """The differentiable explainers of the attack give the same maps as the library methods
    (SRD with μ(L→O) = 1, Captum, pytorch-grad-cam), and gradients reach the input."""
    from ierf.bench import attack
    from ierf.metrics.similarity import pearson

    model = ierf.load_model("toy-resnet")
    batch = ierf.bench.data.SyntheticData(model, 3, seed=5).batch(0, 3)
    x, y = batch.x.clone().requires_grad_(True), batch.y
    ref = {"srd": ierf.attributor("srd", model, final="ones"),
           "grad-x-input": ierf.attributor("grad-x-input", model),
           "integrated-gradients": ierf.attributor("integrated-gradients", model, n_steps=16,
                                                   method="riemann_middle")}
    mine = attack.explainers(model)
    for name, method in ref.items():
        a = mine[name]()(model.net, x, y)
        torch.testing.assert_close(a.detach(), method.attribute(batch.x, y), atol=1e-5, rtol=1e-4)
        (g,) = torch.autograd.grad(a.pow(2).sum(), x)
        assert g.abs().sum() > 0, name
    cam = mine["gradcam"]()(model.net, x, y).detach()
    assert pearson(cam, ierf.attributor("gradcam", model).attribute(batch.x, y)).min() > 0.98


@pytest.mark.parametrize("name", ["toy-resnet", "toy-vgg"])
def test_attack_guided_backprop_and_lrp_are_the_registry_maps_with_exact_input_gradients(name):
    """Guided backprop (Captum) and LRP-z⁺ (Zennit, same canonization) give the registry's maps
    on the real network; under the attack's softplus surrogate their derivative w.r.t. the
    input matches central finite differences (float64; off the max-pool switches a tiny step
    stays clear of)."""
    from ierf.bench import attack
    from ierf.metrics.attacks import SoftplusSurrogate

    model = ierf.load_model(name)
    batch = ierf.bench.data.SyntheticData(model, 2, seed=5).batch(0, 2)
    mine = attack.explainers(model)
    assert set(attack.DEFAULT_METHODS) <= set(mine) & set(ierf.methods())  # the paper's set
    for m in ("guided-backprop", "lrp-zplus"):
        a = mine[m]()(model.net, batch.x.clone().requires_grad_(True), batch.y).detach()
        ref = ierf.attributor(m, model).attribute(batch.x, batch.y)
        torch.testing.assert_close(a, ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-4)
    model.net.double()
    g = torch.Generator().manual_seed(0)
    x = batch.x.double() + 0.05 * torch.randn(batch.x.shape, generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    w = torch.randn(x.shape[0], *x.shape[2:], generator=g, dtype=torch.float64)
    mine = attack.explainers(model)  # built on the float64 network
    for m in ("guided-backprop", "lrp-zplus"):
        explain, h = mine[m](), 1e-8
        z = x.clone().requires_grad_(True)
        with SoftplusSurrogate(30.0):
            (grad,) = torch.autograd.grad((explain(model.net, z, batch.y) * w).sum(), z)
            maps = [explain(model.net, (x + s * h * v).requires_grad_(True), batch.y).detach()
                    for s in (1, -1)]
        fd = ((maps[0] - maps[1]) * w).sum().item() / (2 * h)
        assert grad.abs().sum() > 0, m
        assert (grad * v).sum().item() == pytest.approx(fd, rel=1e-4, abs=1e-6), m


def test_best_respects_the_score_direction():
    t = Table("t", ["a", "b", "c"], ["up", "down"], ["higher", "lower"],
              np.array([[0.1, 0.5], [0.3, 0.2], [np.nan, 0.9]]), np.full((3, 2), 0.01),
              np.ones((3, 2), int))
    assert t.best() == [{1}, {1}]
    assert "| c | – |" in t.markdown()


@pytest.mark.slow
def test_full_size_main_table_on_the_synthetic_benchmark(tmp_path):
    """The paper's metric settings (100 fidelity subsets, 200 stability samples), 64 images."""
    methods = ["saliency", "guided-backprop", "grad-x-input", "lrp-zplus", "gradcam", "srd-low",
               "srd-high", "srd"]
    code, out = bench(tmp_path, "local", "--n", "64", "--batch-size", "16",
                      "--methods", ",".join(methods))
    assert code == 0
    values = check_table(out, methods, METRICS)
    assert values["srd"]["Att."] > values["saliency"]["Att."] + 0.3
    assert values["srd"]["Sta."] < values["saliency"]["Sta."]


@pytest.mark.parametrize("data", ["synthetic", "photos"])
def test_every_metric_abbreviation_is_explained(tmp_path, data):
    from ierf.bench.run import Outcome
    from ierf.bench.suites import plan

    table = plan("main", "toy-resnet", data, ["srd"], 64, True).table(Outcome())
    assert list(table.glossary) == table.columns                 # Poi./Att./… or GPG/…
    note = table.markdown().splitlines()[-1]
    assert all(f"{c}: " in note for c in table.columns)
    table.figure(tmp_path / "figure.png")                        # legend + glossary fit
    with Image.open(tmp_path / "figure.png") as im:
        assert im.format == "PNG"
