"""What the experiments of notebooks 02 and 03 share: their data sets, one training run on the engine, and
seed statistics.  Every run is :func:`q4core.train.train` on a plain MLP (Linear -> ReLU, no BatchNorm, so the
ranges the notebooks follow are the layers' own), SGD with momentum, under a named recipe.

Runs without a per-step callback are cached tasks of :mod:`q4core.runs` (:func:`mlp_run` builds one;
:func:`accuracy_by_recipe` submits a whole sweep at once, so an executor can run it in parallel); runs with an
``on_step`` recorder train in this process (a callback cannot be cached or shipped)."""
from __future__ import annotations

import math
import weakref

import numpy as np

from .._validation import check_int_list
from ..metrics import quantization_snr_db

__all__ = ["DATASETS", "load_dataset", "mlp_run", "train_mlp", "accuracy_by_recipe", "StepRecorder", "snr_or_nan",
           "step_to_step_change"]

DATASETS = ("digits", "mnist")
# id(dataset) -> (weak reference, {"dataset", "seed"}): how a data set load_dataset returned can be loaded again
_SOURCES = {}


def load_dataset(name, seed=0):
    """``"digits"`` (scikit-learn 8 x 8 digits, 1259 training images) or ``"mnist"`` (the 5k MNIST subset),
    pixels in [0, 1], from :mod:`q4core.data`."""
    from .. import data
    if name == "digits":
        ds = data.load_digits_8x8(seed=seed)
    elif name == "mnist":
        ds = data.load_mnist_5k(seed=seed)
    else:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    key = id(ds)
    _SOURCES[key] = (weakref.ref(ds, lambda _: _SOURCES.pop(key, None)), {"dataset": name, "seed": int(seed)})
    return ds


def _source_of(dataset):
    entry = _SOURCES.get(id(dataset))
    return entry[1] if entry is not None and entry[0]() is dataset else None


def _mlp_kwargs(hidden, epochs, batch_size, lr):
    return {"model": "mlp", "epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
            "optimizer": "sgd", "weight_decay": 0.0,
            "model_kwargs": {"hidden": tuple(int(h) for h in hidden), "batchnorm": False}}


def mlp_run(dataset, recipe, hidden=(64, 64), epochs=3, batch_size=32, lr=0.05, seed=0, recorder=None):
    """The :class:`q4core.runs.RunConfig` of :func:`train_mlp` (without callbacks; ``recorder``: a recorder spec
    made where the run executes, see :class:`q4core.runs.RunConfig`)."""
    from ..runs import RunConfig
    return RunConfig(data=dataset, recipe=recipe, seed=int(seed), source=_source_of(dataset), recorder=recorder,
                     **_mlp_kwargs(hidden, epochs, batch_size, lr))


def train_mlp(dataset, recipe, hidden=(64, 64), epochs=3, batch_size=32, lr=0.05, seed=0, on_step=None,
              return_model=False):
    """One training run of an MLP with hidden widths ``hidden`` on ``dataset`` under ``recipe`` (a name, dict
    or Recipe): the :func:`q4core.train.train` result (and the model with ``return_model``).  Without
    ``on_step`` and ``return_model`` the run is a cached task (:func:`q4core.runs.map`); with them it trains
    here - on one BLAS/GEMM thread, as a cached run does, so its numbers do not depend on the caller's thread
    settings (float32 BLAS on two threads moves last bits; a q4-reproduce with a LocalCluster gives its kernels
    one thread)."""
    from .. import runs
    if on_step is None and not return_model:
        return runs.map([mlp_run(dataset, recipe, hidden, epochs, batch_size, lr, seed)])[0]
    from ..train import train
    with runs._limit_threads(1):
        return train(data=dataset, recipe=recipe, seed=int(seed), on_step=on_step, progress=False,
                     return_model=return_model, **_mlp_kwargs(hidden, epochs, batch_size, lr))


def accuracy_by_recipe(dataset, recipes, seeds, **kwargs):
    """Test accuracy of :func:`train_mlp` per recipe and seed: ``{label: {"recipe", "accuracy": [...], "mean",
    "std", "stopped"}}`` for ``recipes`` = ``{label: recipe name}``.  The same seeds for every recipe (same
    initial weights and batch order), so differences between recipes can be taken per seed.  The whole sweep
    is one :func:`q4core.runs.map` (cached runs are not trained again)."""
    from .. import runs as _runs
    seeds = check_int_list(seeds, "seeds", min_value=0)
    configs = [mlp_run(dataset, recipe, seed=s, **kwargs) for recipe in recipes.values() for s in seeds]
    results = iter(_runs.map(configs))
    out = {}
    for label, recipe in recipes.items():
        runs = [next(results) for _ in seeds]
        accs = [float("nan") if r["test_accuracy"] is None else float(r["test_accuracy"]) for r in runs]
        out[label] = {"recipe": recipe, "accuracy": accs, "mean": float(np.mean(accs)),
                      "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                      "stopped": [r["stopped"] for r in runs]}
    return out


def snr_or_nan(x, q):
    """Quantization SNR in dB, NaN for an all-zero tensor (nothing to measure)."""
    value = quantization_snr_db(x, q)
    return value if math.isfinite(value) else float("nan")


def step_to_step_change(series):
    """Median relative change ``|x[t+1] - x[t]| / |x[t]|`` of a per-step series (0 for fewer than 2 steps)."""
    x = np.asarray(series, dtype=np.float64)
    if x.size < 2:
        return 0.0
    return float(np.median(np.abs(np.diff(x)) / np.maximum(np.abs(x[:-1]), 1e-300)))

class StepRecorder:
    """Base of the per-step recorders (``on_step`` callbacks made where a run executes): records every
    ``every``-th step into ``records`` (JSON values, returned with a cached run's result)."""

    def __init__(self, every=10):
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.every = int(every)
        self.records = []

    @classmethod
    def spec(cls, every):
        """The recorder spec of a cached run (:class:`q4core.runs.RunConfig` ``recorder=``) making this recorder
        with ``every`` where the run executes."""
        return {"factory": f"{cls.__module__}:{cls.__qualname__}", "kwargs": {"every": int(every)}}

    def __call__(self, step, model, info):
        if step % self.every == 0:
            self.record(step, model, info)

    def record(self, step, model, info):  # pragma: no cover - abstract
        raise NotImplementedError
