"""One colour convention for every map (ierf.viz): diverging red/blue centred at 0 for signed
maps, sequential for unsigned ones, grey photo under the overlay, and the display-only 2 × 2
averaging of maps with a period-2 pixel grid."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from ierf.errors import IerfError
from ierf.viz import overlay, save_panel, show, signed_view
from ierf.viz.overlay import phase_spread, pooled


def test_sign_modes_and_colour_maps() -> None:
    m = torch.tensor([[-2.0, 0.0], [1.0, 2.0]])
    values, cmap, (lo, hi) = signed_view(m, percentile=100)
    assert cmap == "RdBu_r" and (lo, hi) == (-1, 1)
    np.testing.assert_allclose(values, [[-1, 0], [0.5, 1]])
    for sign, expected in (("positive", [[0, 0], [0.5, 1]]), ("negative", [[1, 0], [0, 0]]),
                           ("absolute", [[1, 0], [0.5, 1]])):
        values, cmap, (lo, hi) = signed_view(m, sign, percentile=100)
        assert cmap == "inferno" and (lo, hi) == (0, 1)
        np.testing.assert_allclose(values, expected)
    assert signed_view(m.abs())[1] == "inferno"                 # auto: no negatives
    with pytest.raises(IerfError, match="unknown sign mode"):
        signed_view(m, "signed")


def test_outliers_are_clipped_at_the_percentile() -> None:
    m = torch.ones(100, 100)
    m[0, 0] = 1000.0                                     # one spike
    values, *_ = signed_view(m, percentile=99.5)
    assert values[0, 0] == 1.0 and values[50, 50] == 1.0   # the rest is not washed out


def test_overlay_greys_the_photo_and_colours_the_evidence() -> None:
    image = torch.zeros(3, 4, 4)
    image[0] = 1.0                                        # a pure red photo
    m = torch.zeros(4, 4)
    m[0, 0], m[3, 3] = 1.0, -1.0
    rgb = overlay(image, m, percentile=100)
    grey = rgb[1, 1]
    assert np.allclose(grey, grey[0])                     # no map: grey, whatever the photo
    assert rgb[0, 0, 0] > rgb[0, 0, 2] + 0.2              # positive: red
    assert rgb[3, 3, 2] > rgb[3, 3, 0] + 0.2              # negative: blue


def test_a_period_two_grid_is_found_and_averaged_away() -> None:
    g = torch.Generator().manual_seed(0)
    smooth = torch.rand(32, 32, generator=g) + 1
    grid = smooth.clone()
    grid[::2, ::2] *= 3                                   # even-even pixels thrice as strong
    assert phase_spread(smooth) < 1.2
    assert phase_spread(grid) > 2.5
    p = pooled(grid, 2)
    assert phase_spread(p) == pytest.approx(1.0)
    torch.testing.assert_close(p.sum(), grid.sum())        # block means: mass kept
    assert torch.equal(pooled(grid, 1), grid)


def test_save_panel_writes_three_panels_and_says_when_it_averaged(tmp_path, monkeypatch) -> None:
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    grid = torch.ones(32, 32)
    grid[::2, ::2] = 4.0
    titles: list[str] = []
    original = plt.Figure.suptitle
    monkeypatch.setattr(plt.Figure, "suptitle",
                        lambda self, t, *a, **k: titles.append(t) or original(self, t, *a, **k))
    for name, m in (("plain.png", torch.randn(32, 32)), ("grid.png", grid)):
        save_panel(image, m, tmp_path / name, title="t")
        width, height = Image.open(tmp_path / name).size
        assert width > 2 * height
        assert ("2×2-averaged" in titles[-1]) == (name == "grid.png")
    with pytest.raises(IerfError, match="pool must be"):
        save_panel(image, grid, tmp_path / "x.png", pool=0)
    assert not (tmp_path / "x.png").exists()


def test_show_modes_draw_on_the_axes() -> None:
    image, m = torch.rand(3, 16, 16), torch.randn(16, 16)
    fig, axes = plt.subplots(1, 3)
    show(m, ax=axes[0], colorbar=True)
    show(m, image, axes[1], mode="overlay")
    show(m, image, axes[2], mode="contour")
    assert len(axes[0].images) == 1 and len(axes[1].images) == 1
    assert axes[2].collections                          # the contour lines
    with pytest.raises(IerfError, match="unknown display mode"):
        show(m, mode="3d")
    plt.close(fig)
