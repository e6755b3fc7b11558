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
    assert plotting.PALETTE["yellow"] not in plotting.COLORS   # too light on white
    assert plotting.STYLE_PATH.exists()


def test_json_floats_carry_six_significant_digits(tmp_path):
    """Float32 results that differ only in their last bits (BLAS summation order on AVX2 vs AVX-512) give the
    same bytes."""
    x = np.float32(0.1)
    y = np.nextafter(x, np.float32(1))
    rng = np.random.default_rng(0)
    v = rng.random(10_000).astype(np.float32)
    s1, s2 = np.sum(v), np.float32(sum(float(t) for t in v[::-1]))   # two reduction orders
    a = plotting.save_figure(_figure(), "06_a", tmp_path / "a", data={"x": x, "s": [s1, 1 / 3, 123456789.0, 7]})
    b = plotting.save_figure(_figure(), "06_a", tmp_path / "b", data={"x": y, "s": [s2, 1 / 3, 123456789.0, 7]})
    assert x != y
    assert a["json"].read_bytes() == b["json"].read_bytes()
    record = json.loads(a["json"].read_text())["data"]
    assert record["x"] == 0.1 and record["s"][1:] == [0.333333, 123457000.0, 7]
    assert isinstance(record["s"][3], int)
    assert plotting.JSON_SIGNIFICANT_DIGITS == 6


@pytest.mark.parametrize("kind", ["folder", "fifo", "symlink", "device"])
def test_save_figure_refuses_to_replace_what_is_not_a_regular_file(tmp_path, kind):
    target = tmp_path / "07_x.png"
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        (tmp_path / "elsewhere.png").write_bytes(b"keep")
        target.symlink_to(tmp_path / "elsewhere.png")
    else:
        try:
            os.mknod(target, 0o600 | __import__("stat").S_IFCHR, os.makedev(1, 7))   # like /dev/full
        except PermissionError:
            pytest.skip("creating a character device needs root")
    before = os.lstat(target)
    with pytest.raises(ValueError, match="07_x.png exists and is"):
        plotting.save_figure(_figure(), "07_x", tmp_path, data={"v": 1})
    after = os.lstat(target)
    assert (before.st_mode, before.st_ino) == (after.st_mode, after.st_ino)
    # nothing written: not the pdf, not the json, no temporaries
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["07_x.png"] + (["elsewhere.png"] if kind == "symlink"
                                                                                else []))


def test_figures_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="figures_dir .* is not a folder"):
        plotting.save_figure(_figure(), "08_x", tmp_path / "f")


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".09_x.png.{dead_pid}-abcd1234.tmp"
    live = tmp_path / f".09_x.pdf.{os.getpid()}-abcd1234.tmp"
    other = tmp_path / "09_x.png"
    for p in (stale, live, other):
        p.write_bytes(b"x")
    assert plotting.remove_stale_temporaries(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_seed_intervals_draws_dots_means_and_intervals():
    fig, ax = plotting.new_figure()
    out = plotting.seed_intervals(ax, {"a": [1.0, 2.0, 3.0], "b": [2.0, None, 2.5], "c": [None]},
                                  reference=1.5, reference_label="aim", ylabel="accuracy (%)")
    assert out["a"]["n"] == 3 and out["a"]["mean"] == 2.0 and out["a"]["low"] < 1.0
    assert out["b"]["n"] == 2 and out["c"]["mean"] is None
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert ax.get_ylabel() == "accuracy (%)"
    assert any("1 diverged" == t.get_text() for t in ax.texts)
    fig2, ax2 = plotting.new_figure()
    plotting.seed_intervals(ax2, {"long label": [1.0, 2.0]}, horizontal=True, ylabel="gap (points)")
    assert ax2.get_xlabel() == "gap (points)"


def test_seed_points_draws_seeds_a_mean_and_its_interval_cut_at_the_floor():
    fig, ax = plotting.new_figure()
    iv = plotting.seed_points(ax, 1.0, [1.0, None, 2.0, float("nan"), 3.0], "C0")
    assert iv["n"] == 3 and iv["mean"] == 2.0 and iv["low"] < 1.0
    circles, diamond = ax.lines[0], ax.containers[0]
    assert list(circles.get_ydata()) == [1.0, 2.0, 3.0] and list(circles.get_xdata()) == [1.0, 1.0, 1.0]
    low_cap = min(line.get_ydata()[0] for line in diamond.lines[1])
    assert low_cap == pytest.approx(iv["low"])
    # a log-axis floor: values and the interval's bottom are drawn at it
    fig2, ax2 = plotting.new_figure()
    iv2 = plotting.seed_points(ax2, 0.0, [1e-9, 1e-3, 2e-3], "C1", floor=1e-6)
    assert min(ax2.lines[0].get_ydata()) == 1e-6 and iv2["low"] < 1e-6
    assert min(line.get_ydata()[0] for line in ax2.containers[0].lines[1]) == pytest.approx(1e-6)
    # one value, or all equal: a bare diamond, no bar
    fig3, ax3 = plotting.new_figure()
    for x, vals in ((0.0, [5.0]), (1.0, [4.0, 4.0])):
        plotting.seed_points(ax3, x, vals, "C2")
    assert not ax3.containers and [list(line.get_marker() for line in ax3.lines)] == [["o", "D", "o", "D"]]
