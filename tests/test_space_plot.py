"""The units-in-space picture: a valid PNG, and the connections it draws are the strongest."""

import pytest
import torch

from lifelab.analysis.space_plot import plot_units_in_space, strongest_connections
from lifelab.learners.space import place_units, unit_importances


def test_strongest_connections_are_the_largest_magnitudes_per_layer():
    w0 = torch.tensor([[0.1, -5.0, 0.2], [3.0, 0.0, -0.3]])
    w1 = torch.tensor([[0.5, -0.6], [0.01, 0.02]])
    links = strongest_connections([w0, w1], top_k=2)
    assert links == [(0, 0, 1, -5.0), (0, 1, 0, 3.0),
                     (1, 0, 1, pytest.approx(-0.6)), (1, 0, 0, 0.5)]
    assert len(strongest_connections([w0, w1], top_k=100)) == 6 + 4   # capped at every link
    assert strongest_connections([w0], top_k=0) == []


def test_writes_a_png_of_a_real_layout(tmp_path):
    g = torch.Generator().manual_seed(0)
    sizes = [16, 8, 3]
    positions = place_units(sizes, g)
    weights = [torch.randn(b, a, generator=g) for a, b in zip(sizes, sizes[1:], strict=False)]
    path = tmp_path / "space.png"
    fig = plot_units_in_space(positions, weights, unit_importances(weights), path=path, top_k=5)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    from matplotlib.image import imread
    assert imread(path).shape[:2] == (650, 750)
    lines = fig.axes[0].collections[0]                       # the drawn connections
    assert len(lines.get_segments()) == 5 + 5
    plot_units_in_space(positions, weights, path=tmp_path / "grey.png")   # values are optional
    assert (tmp_path / "grey.png").stat().st_size > 10_000


@pytest.mark.parametrize("kwargs, match", [
    ({"top_k": -1}, "top_k must be"),
    ({"values": [torch.ones(4)]}, "one array per layer"),
])
def test_bad_inputs_name_the_fix(kwargs, match):
    positions = place_units([4, 2], torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=match):
        plot_units_in_space(positions, [torch.ones(2, 4)], **kwargs)
    with pytest.raises(ValueError, match="to match the positions"):
        plot_units_in_space(positions, [torch.ones(4, 2)])
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        plot_units_in_space([p[:, :2] for p in positions], [torch.ones(2, 4)])
