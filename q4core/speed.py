"""What 4-bit arithmetic buys on the machine at hand: GEMM throughput, training-step time, memory, energy.

The computations behind notebook 05 (the notebook only calls these and draws):

* :func:`measure_gemm` - the ``python -m q4core.bench gemm`` measurements, run in-process: median GOP/s of every
  kernel path and of numpy float32 at the same size and thread count, one run (timing changes run to run);
  :func:`check_kernels` - every kernel path against the numpy reference, bit for bit, on odd shapes;
  :func:`summarize_gemm` - speed-up over numpy float32 of the best kernel per GEMM of a training step.
* :func:`memory_per_value` - bytes per stored value of each number format, counted on real arrays (the packed
  4-bit arrays of :func:`q4core.quant.encode_packed`, the GEMM operand of :func:`q4core.gemm.pack_int4`), next
  to the nominal ``bits / 8``; :func:`memory_per_parameter` and :func:`memory_per_activation` - what one
  parameter and one activation cost during training under fp32, fp16 (mixed precision), HFP8 and the 4-bit recipe.
* :func:`train_step_times` - one training step under ``fp32``, ``q4`` and simulated ``q4`` on the training
  benchmark's workloads (vision CNN, character language model) when the training engine is installed,
  else ``None`` and the reason.
* :func:`instruction_macs` - multiply-accumulates per instruction of today's x86 vector/matrix units, from the
  instruction definitions (what integer hardware can give over FP16 at most, per instruction).
* :func:`energy_estimate` - :func:`q4core.efficiency.compare_macs` set against a claimed factor.
* ``plot_*`` - the figures, deterministic given their input numbers (same numbers -> same bytes).
"""
from __future__ import annotations

import numbers

import numpy as np

from . import efficiency, formats

__all__ = [
    "GEMM_OPS", "measure_gemm", "check_kernels", "summarize_gemm", "memory_per_value",
    "memory_per_parameter", "memory_per_activation", "train_step_times", "summarize_train", "instruction_macs",
    "energy_estimate", "cpu_summary", "plot_gemm_throughput", "plot_memory", "plot_efficiency",
    "plot_train_steps",
]

#: the three GEMMs of a layer's training step: forward, grad-input, grad-weight
GEMM_OPS = ("int4xint4", "fp4xint4", "int4xfp4")
_OP_TITLES = {"int4xint4": "forward  INT4 x INT4", "fp4xint4": "grad-input  FP4 x INT4",
              "int4xfp4": "grad-weight  INT4 x FP4"}


def _positive_ints(values, name):
    if isinstance(values, (numbers.Integral, np.integer)):
        values = [values]
    try:
        values = list(values)
    except TypeError:
        raise TypeError(f"{name} must be a positive int or a list of them, got {values!r}") from None
    if not values:
        raise ValueError(f"{name} must not be empty")
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Integral, np.integer)) or v < 1:
            raise ValueError(f"{name} must hold positive ints, got {v!r}")
    return [int(v) for v in values]


# --------------------------------------------------------------------------- CPU
def cpu_summary():
    """What this machine offers the GEMM kernels: features found, kernels usable, the default, OpenMP."""
    from . import build_info, kernel_info
    info = kernel_info()
    cpu = info["cpu"]
    return {
        "features": [k for k, v in cpu.items() if v is True],
        "missing": [k for k, v in cpu.items() if v is False],
        "compiled_kernels": list(cpu.get("compiled_kernels", [])),
        "available_kernels": info["available_kernels"],
        "chosen_kernel": info["chosen_kernel"],
        "openmp": info["openmp"], "threads": info["threads"],
        "build": build_info(),
        "kernel_info": info,
    }


# --------------------------------------------------------------------------- GEMM
def measure_gemm(sizes, threads=(1,), repeat=3, kernels=None, seed=0, portable_max_size=512,
                 fakequant=True, log=None):
    """Run the GEMM benchmark (:mod:`q4core.bench.gemm`) in-process and return its result dict.

    ``result["records"]``: one dict per (size, threads, op, kernel) with ``seconds`` (median wall time of
    ``repeat`` runs), ``gops`` (2 M N K / seconds / 1e9) and ``ratio_vs_fp32`` (numpy float32 time at the
    same size and threads, measured in the same run, over this time).  ``op`` is ``fp32``,
    ``fakequant_int4``, ``fakequant_fp4`` (kernel ``numpy``) or one of :data:`GEMM_OPS`.  ``log`` receives
    the benchmark's printed table line by line (default: discarded; the lines are in ``result["log"]``).
    """
    from .bench import gemm as bench_gemm
    from .gemm import available_kernels
    sizes = _positive_ints(sizes, "sizes")
    threads = _positive_ints(threads, "threads")
    repeat = _positive_ints(repeat, "repeat")[0]
    portable_max_size = _positive_ints(portable_max_size, "portable_max_size")[0]
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if kernels is not None:
        kernels = [kernels] if isinstance(kernels, str) else list(kernels)
        bad = [k for k in kernels if k not in available_kernels() or k == "reference"]
        if bad or not kernels:
            raise ValueError(f"kernels must be a non-empty list of {available_kernels()[:-1]}, got {kernels!r}")
    argv = ["--sizes", *map(str, sizes), "--threads", *map(str, threads), "--repeat", str(repeat),
            "--seed", str(seed), "--portable-max-size", str(portable_max_size)]
    if kernels:
        argv += ["--kernels", *kernels]
    if not fakequant:
        argv.append("--no-fakequant")
    lines = []

    def out(line):
        lines.append(line)
        if log is not None:
            log(line)
    result = bench_gemm.run(bench_gemm._parse(argv), out=out)
    result["log"] = lines
    result["sizes"], result["threads"] = sizes, threads
    return result


def check_kernels(m=67, k=131, n=45, seed=0, kernels=None):
    """Every compiled kernel against the numpy reference on random ``m x k`` by ``k x n`` operands.

    Odd shapes exercise the padding; INT4 operands are signed, FP4 codes cover every code.  Returns a list
    of ``{"op", "kernel", "exact"}`` (``exact``: bit-for-bit equal to ``kernel="reference"``).
    """
    from . import gemm
    m, k, n = (_positive_ints(v, name)[0] for v, name in ((m, "m"), (k, "k"), (n, "n")))
    rng = np.random.default_rng(seed)
    a = rng.integers(-8, 8, (m, k)).astype(np.int8)
    b = rng.integers(-8, 8, (k, n)).astype(np.int8)
    g_left = rng.integers(0, 16, (m, k)).astype(np.uint8)
    g_right = rng.integers(0, 16, (k, n)).astype(np.uint8)
    packed = gemm.pack_int4(b)
    calls = {
        "int4xint4": lambda kern: gemm.int4_matmul(a, packed, kernel=kern),
        "fp4xint4": lambda kern: gemm.fp4_int4_matmul(g_left, packed, kernel=kern),
        "int4xfp4": lambda kern: gemm.int4_fp4_matmul(a, g_right, kernel=kern),
    }
    kernels = [x for x in gemm.available_kernels() if x != "reference"] if kernels is None else list(kernels)
    rows = []
    for op, call in calls.items():
        ref = call("reference")
        for kern in kernels:
            out = call(kern)
            rows.append({"op": op, "kernel": kern,
                         "exact": bool(out.dtype == ref.dtype and np.array_equal(out, ref))})
    return rows


def _records(result_or_records):
    if isinstance(result_or_records, dict):
        return result_or_records["records"]
    return list(result_or_records)


def summarize_gemm(result, size=None, threads=1):
    """Speed-ups over numpy float32 at one size (default: the largest measured) and thread count.

    Returns ``{"size", "threads", "fp32_gops", "best": {op: {"kernel", "gops", "ratio"}},
    "step_ratio", "fakequant_ratio"}``.  ``step_ratio`` is the speed-up of the three GEMMs of a training
    step taken together (forward + grad-input + grad-weight, equal work each): ``3 / sum(1 / ratio)``.
    """
    recs = [r for r in _records(result) if r["threads"] == threads]
    if not recs:
        raise ValueError(f"no records with threads={threads}")
    sizes = sorted({r["size"] for r in recs})
    size = sizes[-1] if size is None else size
    recs = [r for r in recs if r["size"] == size]
    if not recs:
        raise ValueError(f"no records with size={size}; measured sizes: {sizes}")
    fp32 = next(r for r in recs if r["op"] == "fp32")
    best = {}
    for op in GEMM_OPS:
        cands = [r for r in recs if r["op"] == op]
        if cands:
            r = max(cands, key=lambda r: r["gops"])
            best[op] = {"kernel": r["kernel"], "gops": r["gops"], "ratio": r["ratio_vs_fp32"]}
    # fakequant_ratio: the faster of the two simulation GEMMs - the best the simulation did
    step = (len(best) / sum(1.0 / v["ratio"] for v in best.values())) if len(best) == len(GEMM_OPS) else None
    fq = [r["ratio_vs_fp32"] for r in recs if r["op"].startswith("fakequant")]
    return {"size": size, "threads": threads, "fp32_gops": fp32["gops"], "best": best, "step_ratio": step,
            "fakequant_ratio": max(fq) if fq else None}


# --------------------------------------------------------------------------- memory
def _sample(shape, seed, nonnegative=False):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.abs(x) if nonnegative else x


def _stored(kind, x):
    """The array a format really stores for float32 ``x`` (scales chosen so nothing saturates much)."""
    from . import quant
    amax = float(np.abs(x).max()) or 1.0
    if kind == "fp32":
        return np.ascontiguousarray(x, dtype=np.float32)
    if kind == "fp16":
        return formats.FP16.encode(x)
    if kind == "fp8_e4m3":
        return formats.FP8_E4M3.encode(x, amax / formats.FP8_E4M3.max)
    if kind == "fp8_e5m2":
        return formats.FP8_E5M2.encode(x, amax / formats.FP8_E5M2.max)
    if kind == "int4":
        return quant.encode_packed(formats.INT4, x, amax / 7.0)
    if kind == "uint4":
        return quant.encode_packed(formats.UINT4, np.abs(x), amax / 15.0)
    if kind == "fp4":
        return quant.encode_packed(formats.RADIX4_FP4, x, amax)
    if kind == "int4_gemm_operand":
        from . import gemm
        packed = gemm.pack_int4(formats.INT4.encode(x, amax / 7.0))
        layout = gemm._kernel_operand(packed)   # (kernel bytes, Kp, Np, column sums) - what the kernels read
        return np.concatenate([layout[0].view(np.uint8).ravel(), layout[3].view(np.uint8).ravel()])
    raise ValueError(f"unknown storage kind {kind!r}")


#: storage kinds: key -> (label, bits of the format, role in the 4-bit recipe)
STORAGE = {
    "fp32": ("FP32", 32, "master weights; fp32 training"),
    "fp16": ("FP16", formats.FP16.bits, "16-bit training"),
    "fp8_e4m3": ("FP8 1-4-3", formats.FP8_E4M3.bits, "HFP8 forward"),
    "fp8_e5m2": ("FP8 1-5-2", formats.FP8_E5M2.bits, "HFP8 backward"),
    "int4": ("INT4 packed", formats.INT4.bits, "weights (SAWB)"),
    "uint4": ("UINT4 packed", formats.UINT4.bits, "activations (PACT)"),
    "fp4": ("radix-4 FP4 packed", formats.RADIX4_FP4.bits, "gradients"),
    "int4_gemm_operand": ("INT4 GEMM operand", formats.INT4.bits, "weights as our kernels read them"),
}


def memory_per_value(shape=(256, 255), seed=0, kinds=None):
    """Bytes per value of each storage kind, counted on a real array of ``shape`` (float32 normal samples).

    Each row: ``{"kind", "label", "role", "bits", "nominal_bytes" (bits / 8), "nbytes" (of the stored
    array), "values", "bytes_per_value" (nbytes / values)}``.  An odd last axis shows the packing's
    padding (one spare nibble per row); ``int4_gemm_operand`` is the kernel layout of
    :func:`q4core.gemm.pack_int4` (one int8 lane per value, K padded to 64, N to 16, plus int64 column
    sums), i.e. what the integer SIMD kernels actually stream.
    """
    shape = tuple(_positive_ints(shape, "shape"))
    kinds = list(STORAGE) if kinds is None else list(kinds)
    x = _sample(shape, seed)
    rows = []
    for kind in kinds:
        if kind not in STORAGE:
            raise ValueError(f"kind must be one of {list(STORAGE)}, got {kind!r}")
        label, bits, role = STORAGE[kind]
        if kind == "int4_gemm_operand" and len(shape) != 2:
            raise ValueError(f"int4_gemm_operand needs a 2-D shape, got {shape}")
        arr = _stored(kind, x)
        rows.append({"kind": kind, "label": label, "role": role, "bits": bits, "nominal_bytes": bits / 8,
                     "nbytes": int(arr.nbytes), "values": int(x.size),
                     "bytes_per_value": arr.nbytes / x.size})
    return rows


#: what each training recipe keeps per parameter: (component, storage kind)
PARAMETER_RECIPES = {
    "fp32": (("weights", "fp32"), ("weight gradient", "fp32")),
    "fp16 (mixed precision)": (("FP32 master weights", "fp32"), ("FP16 GEMM copy", "fp16"),
                               ("weight gradient", "fp16")),
    "HFP8": (("FP32 master weights", "fp32"), ("FP8 1-4-3 GEMM copy", "fp8_e4m3"),
             ("weight gradient (FP16)", "fp16")),
    "q4 (paper)": (("FP32 master weights", "fp32"), ("INT4 packed GEMM copy", "int4"),
                   ("weight gradient (FP16 accumulated)", "fp16")),
}
#: what each recipe keeps per activation element between forward and backward, and its output gradient
ACTIVATION_RECIPES = {
    "fp32": (("saved activation", "fp32"), ("output gradient", "fp32")),
    "fp16 (mixed precision)": (("saved activation", "fp16"), ("output gradient", "fp16")),
    "HFP8": (("saved activation", "fp8_e4m3"), ("output gradient", "fp8_e5m2")),
    "q4 (paper)": (("saved activation (UINT4 packed)", "uint4"),
                   ("output gradient, even grid (FP4)", "fp4"), ("output gradient, odd grid (FP4, TPR)", "fp4")),
}


def _recipe_bytes(recipes, shape, seed):
    per_kind = {r["kind"]: r for r in memory_per_value(shape, seed, kinds=sorted(
        {kind for parts in recipes.values() for _, kind in parts}))}
    rows = []
    for name, parts in recipes.items():
        comps = [{"component": c, "kind": kind, "bytes_per_value": per_kind[kind]["bytes_per_value"],
                  "nominal_bytes": per_kind[kind]["nominal_bytes"]} for c, kind in parts]
        rows.append({"recipe": name, "components": comps,
                     "bytes": sum(c["bytes_per_value"] for c in comps),
                     "nominal_bytes": sum(c["nominal_bytes"] for c in comps)})
    return rows


def memory_per_parameter(shape=(256, 256), seed=0):
    """Bytes one parameter costs during training under each recipe (:data:`PARAMETER_RECIPES`).

    Optimizer state (e.g. momentum, FP32 in every recipe) is left out: it is the same for all.  Each
    component's bytes are counted on a real array of ``shape`` (see :func:`memory_per_value`).
    """
    return _recipe_bytes(PARAMETER_RECIPES, shape, seed)


def memory_per_activation(shape=(256, 256), seed=0):
    """Bytes one activation element costs between forward and backward (:data:`ACTIVATION_RECIPES`).

    The 4-bit recipe keeps the activation packed as UINT4 and, with two-phase rounding, the output gradient
    twice (once on each radix-4 grid) while the two backward GEMMs run.
    """
    return _recipe_bytes(ACTIVATION_RECIPES, shape, seed)


# --------------------------------------------------------------------------- training step
def _train_workloads(batch, language_models, lm_batch, seq_len, seed):
    """The training benchmark's workloads (``python -m q4core.bench train``), built from the public
    :mod:`q4core.nn` API: name -> (model builder, inputs, targets, optimizer name).  Synthetic inputs of
    the real shapes - the step time does not depend on the values."""
    from .nn.models import build_model
    rng = np.random.default_rng(seed)
    loads = {f"vision cnn 28x28 (batch {batch})": (
        lambda: build_model("cnn", (1, 28, 28), 10, seed=seed),
        rng.random((batch, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, batch), "sgd")}
    ids = rng.integers(0, 64, (lm_batch, seq_len))
    targets = rng.integers(0, 64, (lm_batch, seq_len))
    for lm in language_models:
        loads[f"{lm} (batch {lm_batch} x {seq_len})"] = (
            lambda lm=lm: build_model(lm, (seq_len,), 64, seed=seed), ids, targets, "adam")
    return loads


def _train_step(builder, x, y, optimizer, policy):
    from .nn import SGD, Adam, softmax_cross_entropy
    model = builder()
    model.set_policy(policy)
    named = list(model.named_parameters())
    opt = SGD(named, lr=0.01) if optimizer == "sgd" else Adam(named, lr=1e-3)

    def step():
        model.zero_grad()
        loss, grad = softmax_cross_entropy(model.forward(x), y)
        model.backward(grad)
        model.add_regularisation()
        opt.step()
        return loss
    return step


def train_step_times(repeat=5, threads=1, batch=64, language_models=("char_lstm",), lm_batch=32, seq_len=64,
                     first_last="fp16", seed=0):
    """Median time of one training step under ``fp32``, ``q4`` and ``q4 simulated``, per model.

    The workloads of the training benchmark (``python -m q4core.bench train``, which only prints): the
    vision CNN on a 28x28 batch and the character language model(s) ``language_models`` (``char_lstm``,
    ``char_transformer``); a step is forward + loss + backward + update (SGD for the CNN, Adam for the
    language models).  The three precisions are timed round-robin, one step each per round, after one
    warm-up step.  Before timing, one step of q4 and of simulated q4 from the same initial state is run
    and their losses compared (they must be identical).  ``first_last``: mode of the first and last layers
    under q4 (fp16 is the training default).

    Returns ``(result, None)`` or, when the training engine is not installed, ``(None, reason)``.
    ``result``: ``{"records": [{"model", "precision", "seconds", "samples"}], "identical_losses": {model:
    bool}, "repeat", "threads", "first_last"}``.
    """
    import time
    try:
        from .bench._timing import thread_limit
        from .nn.models import build_model  # noqa: F401 - checked here so a missing engine is reported
    except ImportError as exc:
        return None, f"the training engine q4core.nn is not available ({exc})"
    repeat, threads, batch, lm_batch, seq_len = (
        _positive_ints(v, name)[0] for v, name in ((repeat, "repeat"), (threads, "threads"), (batch, "batch"),
                                                   (lm_batch, "lm_batch"), (seq_len, "seq_len")))
    language_models = [language_models] if isinstance(language_models, str) else list(language_models)
    for lm in language_models:
        if lm not in ("char_lstm", "char_transformer"):
            raise ValueError(f"language_models must hold 'char_lstm' or 'char_transformer', got {lm!r}")
    from .recipe import get_recipe
    first_last = "same" if first_last == "q4" else first_last      # "q4": every layer 4-bit
    policies = {
        "fp32": get_recipe("fp32"),
        "q4": get_recipe("q4", threads=threads, first_last=first_last),
        "q4 simulated": get_recipe("q4", simulate=True, threads=threads, first_last=first_last),
    }
    records, identical = [], {}
    with thread_limit(threads):
        for model, (builder, x, y, opt) in _train_workloads(batch, language_models, lm_batch, seq_len,
                                                             int(seed)).items():
            loss_q4 = _train_step(builder, x, y, opt, policies["q4"])()
            loss_sim = _train_step(builder, x, y, opt, policies["q4 simulated"])()
            identical[model] = bool(loss_q4 == loss_sim)
            steps = {name: _train_step(builder, x, y, opt, pol) for name, pol in policies.items()}
            for fn in steps.values():     # warm-up: scale initialisation, allocations
                fn()
            samples = {name: [] for name in steps}
            for _ in range(repeat):
                for name, fn in steps.items():
                    t0 = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - t0)
            for name, times in samples.items():
                records.append({"model": model, "precision": name, "seconds": float(np.median(times)),
                                "samples": [float(t) for t in times]})
    return {"records": records, "identical_losses": identical, "repeat": repeat, "threads": threads,
            "first_last": first_last}, None


def summarize_train(result):
    """Per model: ``{"fp32", "q4", "q4 simulated"}`` seconds and the ratios ``q4 / fp32`` and
    ``simulated / q4`` (how much the integer kernels save against simulating the same numbers)."""
    out = {}
    for r in result["records"]:
        out.setdefault(r["model"], {})[r["precision"]] = r["seconds"]
    for t in out.values():
        t["q4_over_fp32"] = t["q4"] / t["fp32"]
        t["simulated_over_q4"] = t["q4 simulated"] / t["q4"]
    return out


# --------------------------------------------------------------------------- hardware facts
#: multiply-accumulates one instruction performs, from the x86 instruction definitions
#: (Intel 64 and IA-32 Architectures Software Developer's Manual; AMX: Intel ISA extensions reference).
#: (instruction, unit, operand type, MACs per instruction, which CPUs have it)
_INSTRUCTIONS = (
    ("vfmadd231ps zmm", "AVX-512", "FP32", 16, "avx512f"),
    ("vfmadd231ph zmm", "AVX-512 FP16", "FP16", 32, "avx512_fp16"),
    ("vdpbf16ps zmm", "AVX-512 BF16", "BF16", 32, "avx512_bf16"),
    ("vpdpbusd zmm", "AVX-512 VNNI", "INT8 (holds INT4)", 64, "avx512_vnni"),
    ("vpdpbusd ymm", "AVX-VNNI", "INT8 (holds INT4)", 32, "avx_vnni"),
    ("tdpbf16ps", "AMX", "BF16", 16 * 16 * 32, "amx_bf16"),
    ("tdpbssd", "AMX", "INT8 (holds INT4)", 16 * 16 * 64, "amx_int8"),
)


def instruction_macs(cpu_features=None):
    """MACs per instruction of today's x86 FP and integer vector/matrix units, and which this CPU has.

    No x86 unit multiplies 4-bit numbers natively: INT4 runs on the INT8 units, so per instruction integer
    hardware does at most twice the MACs of the same-width FP16/BF16 unit.  ``cpu_features``: the dict of
    :func:`q4core.kernel_info` ``["cpu"]`` (default: this machine's).
    """
    if cpu_features is None:
        from . import kernel_info
        cpu_features = kernel_info()["cpu"]
    return [{"instruction": ins, "unit": unit, "type": typ, "macs": macs,
             "present": cpu_features.get(flag)} for ins, unit, typ, macs, flag in _INSTRUCTIONS]


# --------------------------------------------------------------------------- energy
def energy_estimate(claimed=7.0, baseline="FP16"):
    """Per-MAC energy and area of each recipe of :data:`q4core.efficiency.MAC_RECIPES` against ``baseline``.

    Returns ``{"rows": compare_macs(...), "claimed", "baseline", "above_claim": [names whose density gain
    reaches the claim], "assumptions": efficiency.ASSUMPTIONS, "source": efficiency.SOURCE}``.
    """
    rows = efficiency.compare_macs(baseline)
    return {"rows": rows, "claimed": float(claimed), "baseline": baseline,
            "above_claim": [r["name"] for r in rows if r["density_gain"] >= claimed],
            "assumptions": list(efficiency.ASSUMPTIONS), "source": efficiency.SOURCE}


# --------------------------------------------------------------------------- figures
def _kernel_colors(kernels):
    from .plotting import PALETTE
    order = ["blue", "vermillion", "green", "purple", "orange", "sky_blue", "yellow"]
    return {k: PALETTE[order[i % len(order)]] for i, k in enumerate(kernels)}


def plot_gemm_throughput(result, threads=1):
    """GOP/s against size, one panel per GEMM of a training step; every kernel path, numpy float32 and the
    fake-quantization baseline.  Returns ``(fig, data)`` (``data``: the plotted numbers, for the JSON)."""
    from .plotting import PALETTE, new_figure
    recs = sorted((r for r in _records(result) if r["threads"] == threads),
                  key=lambda r: (r["op"], r["kernel"], r["size"]))
    if not recs:
        raise ValueError(f"no records with threads={threads}")
    kernels = sorted({r["kernel"] for r in recs if r["op"] in GEMM_OPS},
                     key=lambda k: ("amx", "vnni", "avxvnni", "avx2", "portable").index(k)
                     if k in ("amx", "vnni", "avxvnni", "avx2", "portable") else 99)
    colors = _kernel_colors(kernels)
    fig, axes = new_figure("double", aspect=0.38, nrows=1, ncols=3, sharey=True)
    sizes = sorted({r["size"] for r in recs})
    fp32 = [r for r in recs if r["op"] == "fp32"]
    data = {"threads": threads, "sizes": sizes, "series": []}
    for ax, op in zip(axes, GEMM_OPS):
        ax.plot([r["size"] for r in fp32], [r["gops"] for r in fp32], "k--", marker="s", ms=3,
                label="numpy float32 (BLAS)")
        fq_op = "fakequant_int4" if op == "int4xint4" else "fakequant_fp4"
        fq = [r for r in recs if r["op"] == fq_op]
        if fq:
            ax.plot([r["size"] for r in fq], [r["gops"] for r in fq], ls=":", marker="x", ms=3,
                    color=PALETTE["black"], alpha=0.6, label="fake-quantized, float32 GEMM")
        for k in kernels:
            kr = [r for r in recs if r["op"] == op and r["kernel"] == k]
            if kr:
                ax.plot([r["size"] for r in kr], [r["gops"] for r in kr], marker="o", ms=3,
                        color=colors[k], label=f"q4core {k}")
                data["series"].append({"op": op, "kernel": k, "sizes": [r["size"] for r in kr],
                                       "gops": [r["gops"] for r in kr],
                                       "ratio_vs_fp32": [r["ratio_vs_fp32"] for r in kr]})
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_title(_OP_TITLES[op])
        ax.set_xlabel("M = N = K")
    axes[0].set_ylabel(f"GOP/s ({threads} thread{'s' if threads > 1 else ''})")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:          # kernels missing from the first panel (none today) still get an entry
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=6)
    data["series"].insert(0, {"op": "fp32", "kernel": "numpy", "sizes": [r["size"] for r in fp32],
                              "gops": [r["gops"] for r in fp32]})
    return fig, data


def plot_memory(per_value, per_parameter, per_activation):
    """Bytes per value of each format (left) and per parameter / per activation under each recipe
    (right, stacked by component).  Returns ``(fig, data)``."""
    from matplotlib.patches import Patch

    from .plotting import COLORS, new_figure
    fig, (ax_v, ax_p, ax_a) = new_figure("double", aspect=0.42, nrows=1, ncols=3,
                                         gridspec_kw={"width_ratios": [1.0, 1.0, 0.8]})
    labels = [r["label"] for r in per_value]
    y = np.arange(len(labels))
    ax_v.barh(y, [r["bytes_per_value"] for r in per_value], color=COLORS[4], height=0.6)
    ax_v.set_yticks(y)
    ax_v.set_yticklabels(labels)
    ax_v.invert_yaxis()
    ax_v.set_xlabel("bytes per value (measured array)")
    for yi, r in zip(y, per_value):
        ax_v.text(r["bytes_per_value"], yi, f" {r['bytes_per_value']:.3g}", va="center", fontsize=6)
    ax_v.set_xlim(0, max(r["bytes_per_value"] for r in per_value) * 1.3)
    kinds = []
    for ax, rows, title in ((ax_p, per_parameter, "per parameter"), (ax_a, per_activation, "per activation")):
        left = np.zeros(len(rows))
        for i, row in enumerate(rows):
            for c in row["components"]:
                if c["kind"] not in kinds:
                    kinds.append(c["kind"])
                j = kinds.index(c["kind"])
                ax.barh(i, c["bytes_per_value"], left=left[i], height=0.6, color=COLORS[j % len(COLORS)],
                        edgecolor="white", lw=0.5)
                left[i] += c["bytes_per_value"]
            ax.text(left[i], i, f" {left[i]:.3g} B", va="center", fontsize=6)
        ax.set_yticks(np.arange(len(rows)))
        ax.set_yticklabels([r["recipe"] for r in rows] if ax is ax_p else [])
        ax.invert_yaxis()
        ax.set_xlim(0, max(left) * 1.35)
        ax.set_xlabel(f"bytes {title}")
    handles = [Patch(color=COLORS[j % len(COLORS)], label=STORAGE[k][0]) for j, k in enumerate(kinds)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=6)
    data = {"per_value": per_value, "per_parameter": per_parameter, "per_activation": per_activation}
    return fig, data


def plot_efficiency(estimate):
    """Energy gain and density (area) gain per MAC over the baseline, from published per-operation
    figures, with the claimed factor as a line.  Returns ``(fig, data)``."""
    from .plotting import PALETTE, new_figure
    rows = estimate["rows"]
    fig, axes = new_figure("double", aspect=0.3, nrows=1, ncols=2, sharey=True)
    y = np.arange(len(rows))
    for ax, key, title in ((axes[0], "energy_gain", "energy per MAC"), (axes[1], "density_gain", "MACs per area")):
        vals = [r[key] for r in rows]
        ax.barh(y, vals, height=0.6, color=[PALETTE["vermillion"] if "INT4" in r["name"] else PALETTE["sky_blue"]
                                            for r in rows])
        ax.axvline(estimate["claimed"], color="k", ls="--", lw=0.8)
        ax.text(estimate["claimed"], -0.85, f" paper: >{estimate['claimed']:g}x", fontsize=6, va="center")
        ax.axvline(1.0, color="0.6", lw=0.6)
        for yi, v in zip(y, vals):
            ax.text(v, yi, f" {v:.2g}x", va="center", fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel(f"gain in {title} over {estimate['baseline']} (45 nm)")
    axes[0].set_yticks(y)
    axes[0].set_yticklabels([r["name"] for r in rows])
    axes[0].set_ylim(len(rows) - 0.5, -1.3)     # top to bottom, with a row of room for the claim's label
    data = {"baseline": estimate["baseline"], "claimed": estimate["claimed"], "rows": rows,
            "assumptions": estimate["assumptions"], "source": estimate["source"]}
    return fig, data


def plot_train_steps(rows):
    """Median time of one training step per model and precision.  ``rows``: dicts with ``model``,
    ``precision`` and ``seconds``.  Returns ``(fig, data)``."""
    from .plotting import COLORS, new_figure
    rows = sorted(rows, key=lambda r: (r["model"], r["precision"]))
    models = sorted({r["model"] for r in rows})
    precisions = list(dict.fromkeys(r["precision"] for r in sorted(rows, key=lambda r: r["precision"])))
    fig, axes = new_figure("double", aspect=0.3, nrows=1, ncols=len(models), squeeze=False)
    for ax, model in zip(axes[0], models):
        mr = {r["precision"]: r for r in rows if r["model"] == model}
        names = [p for p in precisions if p in mr]
        ms = [mr[p]["seconds"] * 1e3 for p in names]
        ax.bar(range(len(names)), ms, color=[COLORS[precisions.index(p) % len(COLORS)] for p in names])
        for i, v in enumerate(ms):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names)
        ax.set_title(model)
        ax.set_ylabel("ms per training step")
        ax.set_ylim(0, max(ms) * 1.2 if ms and max(ms) > 0 else 1)
    return fig, {"rows": rows}
