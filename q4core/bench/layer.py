"""Per-call overhead of the training engine's quantized layers beyond their integer GEMMs.

Issue 12's target (:data:`OVERHEAD_TARGET_US`): a 64x64x64 quantized linear layer's forward from the
engine costs at most 30 us beyond the GEMM.  At 64 the integer product itself takes about 11 us (AMD EPYC
Zen 4, one thread); what the engine adds around it - scale statistics, encoding and packing the operands, PACT,
the int32 rescale, the bias and the Python between them - is the rest of the layer's time, and it is paid
once per layer per step however small the layer.

:func:`measure_layer` times, for each size n, a ``Linear(n, n)`` (bias on) on a batch of n rows in training
mode, under the default ``q4`` recipe with its first/last-layer rule off (``first_last="same"``: the layer
alone is both first and last, and must be 4-bit):

1. the layer's forward (``layer.forward(x)``, as a training step calls it);
2. its backward for a fixed output gradient (each timed call follows an untimed forward, as in a step);
3. the same layer under ``fp32``, forward and backward;
4. the bare integer GEMMs on operands prepared beforehand - the very operands the engine passed to the
   kernels in one forward + backward (the FP4 kernels' work depends on which exponent groups the codes
   use), the right-hand INT4 operand packed once with :func:`q4core.gemm.pack_int4`.  Each product is
   timed twice: through the engine entry points the layer runs (``int4_matmul_unchecked``,
   ``fp4_int4_matmul_unchecked``, ``int4_fp4_matmul_unchecked``) with the layer's ``scale`` (the kernel
   rescales the int32 result in its store, as in the layer), and through the validated public functions
   (``int4_matmul``, ``fp4_int4_matmul``, ``int4_fp4_matmul``), which add operand scans and return integers.

"Forward beyond its GEMM" is (1) minus the engine-entry forward GEMM, "backward beyond its GEMMs" is (2)
minus the two engine-entry backward GEMMs: the engine's cost around the kernels it actually calls (the
public functions' validation is not part of the engine's path, so subtracting it would hide overhead).

Before timing, one forward + backward is run with the three engine entry points wrapped: the layer must
call each exactly once (the INT4 x INT4 forward, FP4 x INT4 and INT4 x FP4 backward) with a compiled
kernel; otherwise :class:`RuntimeError` - an fp16, simulated or float path would time something else.

Every timing is a median over ``repeat`` samples, each a loop of calls lasting about ``sample_seconds``
(the loop count is calibrated once per item); the items are timed round-robin, one sample each per round,
so load from other processes hits them alike.  Nothing here prints: ``python -m q4core.bench layer``
(:mod:`q4core.bench.cli`) prints :func:`q4core.bench.report.layer_lines`.
"""
from __future__ import annotations

import contextlib
import math
import statistics
import time

import numpy as np

from ._timing import patched, positive_int, positive_ints, thread_limit

__all__ = ["OVERHEAD_TARGET_US", "TARGET_SIZE", "DEFAULT_SIZES", "ENGINE_GEMMS", "measure_layer",
           "overhead_verdict"]

#: issue 12: the forward of a quantized linear layer costs at most this many microseconds beyond its GEMM ...
OVERHEAD_TARGET_US = 30.0
#: ... at M = N = K = this size
TARGET_SIZE = 64
DEFAULT_SIZES = (TARGET_SIZE, 256)
#: the engine entry points of :mod:`q4core.gemm` the layer's three products must run, in call order, with
#: the validated public function timed on the same operands
ENGINE_GEMMS = {"forward": ("int4_matmul_unchecked", "int4_matmul"),
                "grad_dx": ("fp4_int4_matmul_unchecked", "fp4_int4_matmul"),
                "grad_dw": ("int4_fp4_matmul_unchecked", "int4_fp4_matmul")}


@contextlib.contextmanager
def _captured_gemm_calls():
    """Within the block, every call of an :data:`ENGINE_GEMMS` entry point is recorded as
    ``(product, copies of its two operands, its scale)``; the originals are restored on exit.  (The engine looks the
    entry points up as attributes of :mod:`q4core.gemm` at each call, so wrapping the attribute sees them.)"""
    from .. import gemm
    calls = []

    def wrap(product, fn):
        def recorded(a, b, threads=None, scale=None):
            b_values = b.as_array() if isinstance(b, gemm.PackedInt4) else b
            calls.append((product, np.array(a, copy=True), np.array(b_values, copy=True), scale))
            return fn(a, b, threads=threads, scale=scale)
        return recorded
    with patched((gemm, entry, lambda fn, product=product: wrap(product, fn))
                 for product, (entry, _) in ENGINE_GEMMS.items()):
        yield calls


def _layer(n, recipe, seed):
    from ..nn import Linear
    layer = Linear(n, n, rng=seed)
    layer.set_policy(recipe)
    return layer.train()


def _integer_operands(layer, x, grad):
    """The operands the layer hands the kernels in one forward + backward, after checking that it runs the
    three integer products (see the module docstring); ``{product: (a, b)}``."""
    from .. import gemm
    recipe = layer.gemm.recipe
    expected = {"forward": "int", "grad_dx": "fp4-left", "grad_dw": "fp4-right"}
    if not recipe.four_bit or recipe.simulate or layer.gemm.strategy != expected:
        raise RuntimeError(f"the layer under {recipe.name!r} does not run the integer products: four_bit "
                           f"{recipe.four_bit}, simulate {recipe.simulate}, strategies {layer.gemm.strategy}")
    kernel = gemm.kernel_info()["chosen_kernel"]
    if kernel in (None, "reference"):
        raise RuntimeError(f"no compiled GEMM kernel (chosen: {kernel}); the layer would time the numpy oracle")
    with _captured_gemm_calls() as calls:
        layer.forward(x)
        layer.backward(grad)
    products = [product for product, _, _, _ in calls]
    if products != list(ENGINE_GEMMS):
        raise RuntimeError(f"one forward + backward of the layer called the integer GEMMs {products}; "
                           f"expected exactly {list(ENGINE_GEMMS)}")
    return {product: (a, b, scale) for product, a, b, scale in calls}


def _gemm_items(operands, threads):
    """Name -> function of the bare GEMMs, on operands prepared (and right-hand INT4 packed) here."""
    from .. import gemm
    items = {}
    for product, (a, b, scale) in operands.items():
        a = np.ascontiguousarray(a)
        b = gemm.pack_int4(b) if product != "grad_dw" else np.ascontiguousarray(b)
        entry, public = (getattr(gemm, name) for name in ENGINE_GEMMS[product])
        # with the engine's scale: the kernel rescales in its store, as in the layer
        items[f"gemm {product}"] = lambda entry=entry, a=a, b=b, s=scale: entry(a, b, threads=threads, scale=s)
        items[f"public gemm {product}"] = lambda public=public, a=a, b=b: public(a, b, threads=threads)
    return items


def _calls(fn):
    """A sampler of ``fn``: given a loop count, the seconds of that many back-to-back calls."""
    def sample(loop):
        t0 = time.perf_counter()
        for _ in range(loop):
            fn()
        return time.perf_counter() - t0
    return sample


def _backward_calls(layer, x, grad):
    """A sampler of the layer's backward: each timed backward follows an untimed forward (its context)."""
    def sample(loop):
        total = 0.0
        for _ in range(loop):
            layer.forward(x)
            t0 = time.perf_counter()
            layer.backward(grad)
            total += time.perf_counter() - t0
        return total
    return sample


def _medians_us(samplers, repeat, sample_seconds):
    """Median microseconds per call of every sampler: loop counts calibrated so a sample lasts about
    ``sample_seconds``, then ``repeat`` rounds of one sample each.  Returns ``({name: us}, {name: loop})``."""
    loops = {}
    for name, sample in samplers.items():
        sample(2)                                       # warm-up: scale initialisation, allocations
        once = max(sample(3) / 3, 1e-7)
        loops[name] = max(1, math.ceil(sample_seconds / once))
    samples = {name: [] for name in samplers}
    for _ in range(repeat):
        for name, sample in samplers.items():
            samples[name].append(sample(loops[name]) / loops[name])
    return {name: statistics.median(s) * 1e6 for name, s in samples.items()}, loops


def _record(n, us, loops, kernel):
    gemm_backward = us["gemm grad_dx"] + us["gemm grad_dw"]
    return {"size": n, "kernel": kernel,
            "q4_forward_us": us["q4 forward"], "q4_backward_us": us["q4 backward"],
            "fp32_forward_us": us["fp32 forward"], "fp32_backward_us": us["fp32 backward"],
            "gemm_us": {product: us[f"gemm {product}"] for product in ENGINE_GEMMS},
            "public_gemm_us": {product: us[f"public gemm {product}"] for product in ENGINE_GEMMS},
            "forward_beyond_gemm_us": us["q4 forward"] - us["gemm forward"],
            "backward_beyond_gemms_us": us["q4 backward"] - gemm_backward,
            "forward_q4_over_fp32": us["q4 forward"] / us["fp32 forward"],
            "backward_q4_over_fp32": us["q4 backward"] / us["fp32 backward"],
            "loops": loops}


def measure_layer(sizes=DEFAULT_SIZES, repeat=15, threads=1, seed=0, sample_seconds=0.01):
    """Time a ``Linear(n, n)`` layer under q4 and fp32 and its bare integer GEMMs, per size ``n`` (see the
    module docstring).

    Returns ``{"records": [{"size", "kernel", "q4_forward_us", "q4_backward_us", "fp32_forward_us",
    "fp32_backward_us", "gemm_us": {product: us}, "public_gemm_us": {product: us},
    "forward_beyond_gemm_us", "backward_beyond_gemms_us", "forward_q4_over_fp32",
    "backward_q4_over_fp32", "loops": {item: calls per sample}}], "cpu_model", "numpy", "repeat",
    "threads", "seed", "sample_seconds", "target_us", "target_size"}`` (medians in microseconds per call;
    products ``forward``, ``grad_dx``, ``grad_dw``).  ``RuntimeError`` if the q4 layer does not run the
    integer kernels.
    """
    from .. import gemm
    from ..recipe import get_recipe
    from .gemm import cpu_model
    sizes = positive_ints(sizes, "sizes")
    repeat, threads = positive_int(repeat, "repeat"), positive_int(threads, "threads")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(sample_seconds, bool) or not isinstance(sample_seconds, (int, float)) \
            or not (math.isfinite(sample_seconds) and sample_seconds > 0):
        raise ValueError(f"sample_seconds must be a finite number > 0, got {sample_seconds!r}")
    recipes = {"q4": get_recipe("q4", threads=threads, first_last="same"), "fp32": get_recipe("fp32")}
    kernel = gemm.kernel_info()["chosen_kernel"]
    records = []
    with thread_limit(threads):
        for n in sizes:
            rng = np.random.default_rng([int(seed), n])
            x = np.maximum(rng.standard_normal((n, n)), 0).astype(np.float32)   # a ReLU output, as in a step
            grad = (rng.standard_normal((n, n)) * 1e-3).astype(np.float32)
            layers = {name: _layer(n, recipe, int(seed)) for name, recipe in recipes.items()}
            operands = _integer_operands(layers["q4"], x, grad)
            samplers = {}
            for name, layer in layers.items():
                samplers[f"{name} forward"] = _calls(lambda layer=layer: layer.forward(x))
                samplers[f"{name} backward"] = _backward_calls(layer, x, grad)
            samplers.update({name: _calls(fn) for name, fn in _gemm_items(operands, threads).items()})
            us, loops = _medians_us(samplers, repeat, sample_seconds)
            records.append(_record(n, us, loops, kernel))
    return {"records": records, "cpu_model": cpu_model(), "numpy": np.__version__, "repeat": repeat,
            "threads": threads, "seed": int(seed), "sample_seconds": float(sample_seconds),
            "target_us": OVERHEAD_TARGET_US, "target_size": TARGET_SIZE}


def overhead_verdict(result):
    """Issue 12's forward-overhead target on a :func:`measure_layer` result: ``{"size", "overhead_us",
    "goal_us", "met"}`` for the record of :data:`TARGET_SIZE`, or None when that size was not measured."""
    record = next((r for r in result["records"] if r["size"] == TARGET_SIZE), None)
    if record is None:
        return None
    overhead = record["forward_beyond_gemm_us"]
    return {"size": TARGET_SIZE, "overhead_us": overhead, "goal_us": OVERHEAD_TARGET_US,
            "met": bool(overhead <= OVERHEAD_TARGET_US)}
