"""q4core.plotting: style, byte-stable and atomic save_figure."""
import json
import os

import numpy as np
import pytest

from q4core import plotting


def _figure(seed=0):
    fig, ax = plotting.new_figure("single")
    rng = np.random.default_rng(seed)
    ax.plot(np.arange(20), rng.normal(size=20), label=r"$\sigma$ noise")
    ax.imshow(rng.random((8, 8)), extent=(0, 5, 0, 1), aspect="auto")
    ax.set_xlabel("step")
    ax.set_ylabel("value (a.u.)")
    ax.legend()
    return fig


def test_save_figure_is_byte_stable(tmp_path, monkeypatch):
    first = plotting.save_figure(_figure(), "01_test", tmp_path / "a", data={"x": np.float32(0.5)}, caption="c")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567890")   # whatever the caller has set
    second = plotting.save_figure(_figure(), "01_test", tmp_path / "b", data={"x": np.float32(0.5)}, caption="c")
    for kind in ("pdf", "png", "json"):
        assert first[kind].read_bytes() == second[kind].read_bytes(), kind
    assert os.environ["SOURCE_DATE_EPOCH"] == "1234567890"   # restored after saving
    pdf = first["pdf"].read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf   # TrueType embedded (pdf.fonttype 42)
    assert b"CreationDate" not in pdf
    assert b"Software" not in first["png"].read_bytes()


def test_save_figure_writes_the_numbers(tmp_path):
    paths = plotting.save_figure(_figure(), "02_numbers", tmp_path,
                                 data={"a": np.arange(3), "b": (1.5, np.int64(2)), "c": float("inf")}, caption="cap")
    record = json.loads(paths["json"].read_text())
    assert record == {"name": "02_numbers", "caption": "cap", "data": {"a": [0, 1, 2], "b": [1.5, 2], "c": "inf"}}
    assert "json" not in plotting.save_figure(_figure(), "02_nojson", tmp_path)


def test_failed_save_keeps_previous_files_and_leaves_no_temporaries(tmp_path, monkeypatch):
    good = plotting.save_figure(_figure(0), "03_fig", tmp_path, data={"v": 1})
    before = {k: p.read_bytes() for k, p in good.items()}
    fig = _figure(1)

    def broken_savefig(*args, **kwargs):
        with open(args[0], "wb") as fh:   # half a file, then the crash
            fh.write(b"%PDF-broken")
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(fig, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk on fire"):
        plotting.save_figure(fig, "03_fig", tmp_path, data={"v": 2})
    assert {k: p.read_bytes() for k, p in good.items()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["03_fig.json", "03_fig.pdf", "03_fig.png"]


def test_unserialisable_data_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match="data holds"):
        plotting.save_figure(_figure(), "04_bad", tmp_path, data={"x": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["", "a/b", "../x", "fig.pdf", ".hidden", "x y"])
def test_bad_names_are_rejected(tmp_path, name):
    with pytest.raises(ValueError, match="name"):
        plotting.save_figure(_figure(), name, tmp_path)


def test_bad_arguments():
    with pytest.raises(TypeError, match="fig"):
        plotting.save_figure("not a figure", "01_x")
    with pytest.raises(ValueError, match="width"):
        plotting.new_figure("triple")
    with pytest.raises(ValueError, match="aspect"):
        plotting.new_figure("single", aspect=0)


def test_style_sizes_and_palette():
    fig, axes = plotting.new_figure("double", aspect=0.5, nrows=1, ncols=2)
    assert tuple(fig.get_size_inches()) == (plotting.DOUBLE_COLUMN, plotting.DOUBLE_COLUMN * 0.5)
    assert len(axes) == 2
    import matplotlib
    assert matplotlib.rcParams["pdf.fonttype"] == 42
    cycle = [c.lower() for c in matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]]
    assert cycle == [c.lower() for c in plotting.COLORS]   # Okabe-Ito, in order
    assert plotting.STYLE_PATH.exists()
