"""The block-scaled FP4 recipes (nvfp4, mxfp4 and their ablations): spec, registry, the layer GEMMs
(q4core.nn.blockscaled_gemm) against a plain numpy reference, the random Hadamard transform, stochastic
rounding, the fast encoder, training."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from q4core import bsgemm
from q4core.blockscaled import MXFP4, NVFP4
from q4core.blockscaled_encode import COMPILED, encode_rows
from q4core.nn.blockscaled_gemm import hadamard16, random_hadamard, rotate_batch, transposed
from q4core.nn.qgemm import QuantGemm
from q4core.recipe import BLOCK_SCALED, OperandSpec, Recipe, get_recipe, recipe_names
from q4core.train import train

ENCODERS = [False, True] if COMPILED else [False]
BLOCK_NAMES = ["nvfp4", "mxfp4", "nvfp4+no-rht", "nvfp4+no-sr", "nvfp4+1d-weights", "nvfp4+mx-scales",
               "mxfp4+no-rht"]
FORMATS = {"nvfp4": NVFP4, "mxfp4": MXFP4}


# ---------------------------------------------------------------------------------------------- the registry
def test_named_recipes_are_listed_and_round_trip():
    names = recipe_names()
    for name in BLOCK_NAMES:
        assert name in names
        r = get_recipe(name)
        assert r.name == name and r.block_scaled and r.four_bit
        back = Recipe.from_dict(json.loads(r.to_json()))
        assert back.to_dict() == r.to_dict()
        assert get_recipe(r.to_dict()).to_dict() == r.to_dict()


def test_named_recipes_say_what_the_papers_say():
    nv = get_recipe("nvfp4")
    assert {getattr(nv, role).format for role in ("weight", "activation", "grad_dx", "grad_dw")} == {"nvfp4"}
    assert (nv.weight.rounding, nv.activation.rounding, nv.grad_dx.rounding, nv.grad_dw.rounding) == \
        ("nearest", "nearest", "stochastic", "stochastic")
    assert nv.weight_blocks == "2d" and nv.hadamard and nv.blockscaled_forward == "block"
    assert nv.first_last == "fp16"
    mx = get_recipe("mxfp4")
    assert mx.weight.format == "mxfp4" and mx.grad_dx.rounding == "stochastic" and mx.hadamard
    assert mx.blockscaled_forward == "fp16"
    assert not get_recipe("nvfp4+no-rht").hadamard and not get_recipe("mxfp4+no-rht").hadamard
    assert get_recipe("nvfp4+no-sr").grad_dx.rounding == "nearest"
    assert get_recipe("nvfp4+no-sr").grad_dw.format == "nvfp4"
    assert get_recipe("nvfp4+1d-weights").weight_blocks == "1d"
    ms = get_recipe("nvfp4+mx-scales")
    assert ms.weight.format == ms.grad_dx.format == "mxfp4" and ms.weight_blocks == "2d" and ms.hadamard
    assert set(BLOCK_SCALED) == {"nvfp4", "mxfp4"}


@pytest.mark.parametrize("kwargs, match", [
    (dict(weight=OperandSpec("nvfp4", "max")), "scaling 'block' goes with"),
    (dict(weight=OperandSpec("int4_sym", "block")), "scaling 'block' goes with"),
    (dict(grad_dx=OperandSpec("nvfp4", "block", "log"), grad_dw=OperandSpec("nvfp4", "block", "log")),
     "rounding 'nearest' or 'stochastic'"),
    (dict(grad_dx=OperandSpec("mxfp4", "block", "stochastic"), grad_dw=OperandSpec("mxfp4", "block", "stochastic")),
     "one block format for all four roles"),
    (dict(weight_blocks="3d"), "weight_blocks"),
    (dict(blockscaled_forward="bf16"), "blockscaled_forward"),
    (dict(accumulator="fp16"), "accumulate exactly"),
    (dict(static_scale=True), "no scale to freeze"),
])
def test_bad_block_scaled_specs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_recipe("nvfp4", **kwargs)


def test_block_options_refused_on_other_recipes():
    with pytest.raises(ValueError, match="hadamard=True applies to block-scaled recipes"):
        get_recipe("q4", hadamard=True)
    with pytest.raises(ValueError, match="weight_blocks='2d' applies"):
        get_recipe("fp32", weight_blocks="2d")
    with pytest.raises(ValueError, match="unknown ablation 'no-tpr' of a block-scaled recipe"):
        get_recipe("nvfp4+no-tpr")
    with pytest.raises(ValueError, match="unknown ablation 'no-rht' of a 4-bit recipe"):
        get_recipe("q4+no-rht")


# ---------------------------------------------------------------------------------------------- fast encoder
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 40), cols=st.integers(1, 70), spread=st.floats(0, 6), seed=st.integers(0, 2**16),
       fmt=st.sampled_from([NVFP4, MXFP4]), tiles=st.booleans(), rounding=st.sampled_from(["nearest", "stochastic"]),
       compiled=st.sampled_from(ENCODERS), dtype=st.sampled_from([np.float32, np.float64]))
def test_fast_encoder_equals_the_reference(rows, cols, spread, seed, fmt, tiles, rounding, compiled, dtype):
    r = np.random.default_rng(seed)
    x = (r.standard_normal((rows, cols)) * np.exp(spread * r.standard_normal((rows, cols)))).astype(dtype)
    if x.size:
        x.flat[::7] = 0.0
        x.flat[1::11] = -0.0
    bs = (fmt.block, fmt.block) if tiles else None
    ref = fmt.encode(x, axis=1, block_shape=bs, rounding=rounding, rng=np.random.default_rng(seed))
    got = encode_rows(fmt, x, bs, rounding, np.random.default_rng(seed), compiled=compiled)
    assert got.codes.dtype == ref.codes.dtype == np.uint8
    np.testing.assert_array_equal(got.codes, ref.codes)
    np.testing.assert_array_equal(got.scale_codes, ref.scale_codes)
    assert (got.tensor_scale, got.axis, got.block_shape) == (ref.tensor_scale, ref.axis, ref.block_shape)


@pytest.mark.parametrize("compiled", ENCODERS)
def test_fast_encoder_corner_cases(compiled):
    # ties of E2M1 go to the even code: 0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4
    x = np.array([[0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0] + [6.0] + [0.0] * 23]) * 2.0 ** -3
    t = encode_rows(MXFP4, x, compiled=compiled)
    np.testing.assert_array_equal(MXFP4.decode(t)[0, :9] * 8, [0, 1, 1, 2, 2, 4, 4, -4, 6])
    np.testing.assert_array_equal(t.codes, MXFP4.encode(x, axis=1).codes)
    np.testing.assert_array_equal(encode_rows(NVFP4, np.zeros((2, 16)), compiled=compiled).codes, 0)
    # a block whose E4M3 scale underflows to zero is +0 throughout, as the reference makes it
    tiny = np.concatenate([np.full(16, 1e6), -np.full(16, 1e-9)])[None, :]
    np.testing.assert_array_equal(encode_rows(NVFP4, tiny, compiled=compiled).codes, NVFP4.encode(tiny).codes)
    assert encode_rows(NVFP4, tiny, compiled=compiled).codes[0, 16:].max() == 0
    for bad in ([[1.0, np.inf]], [[np.nan, 1.0, 2.0]], [[1.0, np.nan] * 20]):
        with pytest.raises(ValueError, match="NaN or Inf"):
            encode_rows(NVFP4, np.array(bad), compiled=compiled)
    with pytest.raises(ValueError, match="needs rng="):
        encode_rows(NVFP4, np.ones((1, 16)), rounding="stochastic")
    with pytest.raises(ValueError, match="must be 2-D"):
        encode_rows(NVFP4, np.ones(16))


@pytest.mark.parametrize("fmt", [NVFP4, MXFP4])
def test_transposed_tensor_equals_encoding_the_transpose(fmt):
    w = np.random.default_rng(1).standard_normal((40, 70))
    t = transposed(fmt.encode(w, axis=1))
    ref = fmt.encode(w.T, axis=0)
    np.testing.assert_array_equal(t.codes, ref.codes)
    np.testing.assert_array_equal(t.scale_codes, ref.scale_codes)
    assert t.axis == ref.axis
    tile = (fmt.block, fmt.block)
    t2, ref2 = transposed(fmt.encode(w, block_shape=tile)), fmt.encode(w.T, block_shape=tile)
    np.testing.assert_array_equal(t2.codes, ref2.codes)
    np.testing.assert_array_equal(t2.scale_codes, ref2.scale_codes)
    np.testing.assert_array_equal(fmt.decode(t2), fmt.decode(fmt.encode(w, block_shape=tile)).T)


# ---------------------------------------------------------------------------------------------- Hadamard
def test_random_hadamard_is_orthogonal_and_cancels():
    h = hadamard16()
    np.testing.assert_array_equal(h.T @ h, 16 * np.eye(16))
    r = random_hadamard(np.random.default_rng(5))
    np.testing.assert_array_equal(r.T @ r, np.eye(16))          # entries +-1/4: exact in float64
    assert not np.array_equal(r, random_hadamard(np.random.default_rng(6)))
    g = np.random.default_rng(2)
    x, dy = g.standard_normal((37, 9)), g.standard_normal((37, 5))       # 37: padded to 48 rows
    rx, rdy = rotate_batch(x, r), rotate_batch(dy, r)
    assert rx.shape == (48, 9)
    np.testing.assert_allclose(rx.T @ rdy, x.T @ dy, rtol=0, atol=1e-12 * np.abs(x).max() * np.abs(dy).max() * 37)
    assert not np.allclose(rx[:37], x)                               # it does rotate


# ---------------------------------------------------------------------------------------------- the layer
def _layer(recipe, index=1):
    return QuantGemm().configure(recipe, index=index, name="test")


def _data(seed, m=45, k=40, n=24):
    g = np.random.default_rng(seed)
    return (g.standard_normal((m, k)).astype(np.float32), (0.3 * g.standard_normal((k, n))).astype(np.float32),
            (1e-3 * g.standard_normal((m, n))).astype(np.float32))


@pytest.mark.parametrize("fmt_name, blocks", [("nvfp4", "2d"), ("nvfp4", "1d"), ("mxfp4", "1d"), ("mxfp4", "2d")])
def test_layer_products_equal_the_numpy_reference(fmt_name, blocks):
    """Nearest rounding, no Hadamard: each product is the float64 GEMM of blockscaled.quantize'd operands, each
    blocked along its GEMM's reduction axis (to float32 rounding: the block GEMM sums in a fixed order), and
    bit for bit the bsgemm reference of operands encoded by blockscaled.encode."""
    spec = OperandSpec(fmt_name, "block")
    recipe = Recipe(weight=spec, activation=spec, grad_dx=spec, grad_dw=spec, weight_blocks=blocks)
    fmt = FORMATS[fmt_name]
    tile = (fmt.block, fmt.block) if blocks == "2d" else None
    x, w, gy = _data(3)
    gemm = _layer(recipe)
    y, ctx = gemm.forward(x, gemm.prepare_weight(w))
    gx, gw = gemm.backward(gy, ctx)
    assert y.dtype == gx.dtype == gw.dtype == np.float32

    def q(a, axis):
        return fmt.quantize(a, axis=axis, block_shape=tile if a is w or a is w.T else None)

    ref = {"y": q(x, 1) @ (fmt.quantize(w, block_shape=tile) if tile else q(w, 0)),
           "gx": q(gy, 1) @ (fmt.quantize(w, block_shape=tile).T if tile else q(w, 1).T),
           "gw": q(x, 0).T @ q(gy, 0)}
    for name, got in (("y", y), ("gx", gx), ("gw", gw)):
        scale = np.abs(ref[name]).max()
        np.testing.assert_allclose(got, ref[name], rtol=0, atol=1e-6 * scale, err_msg=name)
    enc = {"x1": fmt.encode(x, axis=1), "w": fmt.encode(w, block_shape=tile) if tile else fmt.encode(w, axis=0),
           "gy1": fmt.encode(gy, axis=1), "xT": fmt.encode(x.T, axis=1), "gy0": fmt.encode(gy, axis=0)}
    w_t = transposed(enc["w"]) if tile else transposed(fmt.encode(w, axis=1))
    mm = bsgemm.blockscaled_matmul_reference
    np.testing.assert_array_equal(y, mm(enc["x1"], enc["w"]).astype(np.float32))
    np.testing.assert_array_equal(gx, mm(enc["gy1"], w_t).astype(np.float32))
    np.testing.assert_array_equal(gw, mm(enc["xT"], enc["gy0"]).astype(np.float32))


def test_simulate_gives_the_same_bits():
    x, w, gy = _data(4)
    out = []
    for simulate in (False, True):
        gemm = _layer(get_recipe("nvfp4", simulate=simulate))
        y, ctx = gemm.forward(x, gemm.prepare_weight(w))
        out.append((y, *gemm.backward(gy, ctx)))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_hadamard_changes_only_the_rounding_of_the_weight_gradient():
    x, w, gy = _data(5, m=64)
    res = {}
    for had in (False, True):
        gemm = _layer(get_recipe("nvfp4", hadamard=had, grad_dx=dict(rounding="nearest"),
                                 grad_dw=dict(rounding="nearest")))
        y, ctx = gemm.forward(x, gemm.prepare_weight(w))
        res[had] = (y, *gemm.backward(gy, ctx))
    np.testing.assert_array_equal(res[False][0], res[True][0])      # forward and dL/dx untouched
    np.testing.assert_array_equal(res[False][1], res[True][1])
    exact = x.astype(np.float64).T @ gy
    assert not np.array_equal(res[False][2], res[True][2])
    for had in (False, True):       # both estimate x^T dY to FP4 accuracy
        err = np.linalg.norm(res[had][2] - exact) / np.linalg.norm(exact)
        assert err < 0.25, (had, err)


def test_stochastic_rounding_is_unbiased_and_reproducible():
    gemm = _layer(get_recipe("nvfp4"))
    spec = gemm.recipe.grad_dx
    row = np.random.default_rng(0).standard_normal(16)
    row[0] = 4.0                                 # one block max: every row has the same scales
    x = np.tile(row, (4000, 1))
    t = gemm.blockscaled.encode(x, 1, spec)
    vals = NVFP4.decode(t)
    assert np.all(np.diff(t.scale_codes[:, 0]) == 0)
    mean, sd = vals.mean(axis=0), vals.std(axis=0)
    assert np.all(np.abs(mean - row) <= 5 * sd / math.sqrt(len(x)) + 1e-12)
    assert np.any(sd > 0)                        # it does round stochastically
    again = _layer(get_recipe("nvfp4")).blockscaled.encode(x, 1, spec)
    np.testing.assert_array_equal(again.codes, t.codes)
    other = _layer(get_recipe("nvfp4", seed=1)).blockscaled.encode(x, 1, spec)
    assert not np.array_equal(other.codes, t.codes)


def test_layer_steps_are_reproducible_from_the_seed():
    x, w, gy = _data(6)
    runs = []
    for _ in range(2):
        gemm = _layer(get_recipe("nvfp4"))
        y, ctx = gemm.forward(x, gemm.prepare_weight(w))
        runs.append((y, *gemm.backward(gy, ctx), *gemm.backward(gy, ctx)))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(runs[0][2], runs[0][4])     # a new rounding and rotation each call


def test_non_finite_values():
    x, w, gy = _data(7)
    gemm = _layer(get_recipe("nvfp4"))
    y, ctx = gemm.forward(x, gemm.prepare_weight(w))
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        gemm.backward(np.full_like(gy, np.inf), ctx)
    x[0, 0] = np.nan
    y, _ = gemm.forward(x, gemm.prepare_weight(w))
    assert np.isnan(y).all()


# ---------------------------------------------------------------------------------------------- training
def _decreases(losses):
    return all(math.isfinite(v) for v in losses) and np.mean(losses[-3:]) < np.mean(losses[:3])


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_each_recipe_trains_the_digits_mlp(name):
    r = train(task="digits", recipe=name, epochs=1, max_steps=15, progress=False, seed=0, threads=1)
    assert r["stopped"] is None and _decreases(r["history"]["step_loss"]), r["history"]["step_loss"]


@pytest.mark.parametrize("name", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("task, model, kwargs", [
    ("digits", "resnet", {"widths": (8,), "blocks": 1}),
    ("chars", "char_lstm", {"embed": 8, "hidden": 16}),
    ("chars", "char_gru", {"embed": 8, "hidden": 16}),
    ("chars", "char_transformer", {"dim": 16, "heads": 2, "layers": 1}),
])
def test_recipes_train_a_tiny_resnet_and_char_models(name, task, model, kwargs):
    extra = {"max_chars": 40000} if task == "chars" else {}
    r = train(task=task, model=model, recipe=name, epochs=1, max_steps=8, progress=False, seed=0, threads=1,
              model_kwargs=kwargs, **extra)
    assert r["stopped"] is None and _decreases(r["history"]["step_loss"]), r["history"]["step_loss"]


def test_block_scaled_runs_hash_the_block_scaled_sources():
    """The block-scaled formats, encoder and GEMM change the numbers of mxfp4 / nvfp4 runs only."""
    from q4core import runs
    block = {"blockscaled.py", "blockscaled_encode.py", "bsgemm.py"}   # their Cython twins: implementation
    for name in ("nvfp4", "mxfp4+no-rht"):
        assert set(runs.RunConfig(task="digits", recipe=name, seed=0, epochs=1).identity()["sources"]) == block
    assert "sources" not in runs.RunConfig(task="digits", recipe="q4", seed=0, epochs=1).identity()
    assert runs.RunConfig(task="digits", recipe="nvfp4", seed=0, epochs=1).key() != \
        runs.RunConfig(task="digits", recipe="nvfp4+no-rht", seed=0, epochs=1).key()


@pytest.mark.skipif(not COMPILED, reason="the compiled encoder is not built")
def test_compiled_e4m3_block_scales_equal_the_reference():
    from q4core import _bsencode
    from q4core.formats import FP8_E4M3
    g = np.random.default_rng(8)
    grid = FP8_E4M3.values[FP8_E4M3.values >= 0]
    ties = (grid[:-1] + grid[1:]) / 2                      # every tie of E4M3, subnormal and normal
    amax = np.concatenate([[0.0, 1e-300, 448.0, 460.0, 1e6], grid, ties, np.nextafter(ties, 0),
                           np.nextafter(ties, np.inf), np.exp(g.uniform(-14, 7, 500))]) * 6.0
    for ts in (1.0, float(np.float32(448 * 6 / 3.7)), 2.0 ** -5):
        codes, values = _bsencode.e4m3_block_scales(amax[None, :], ts)
        ref = FP8_E4M3.encode(amax / 6.0 * ts)
        np.testing.assert_array_equal(codes[0], ref)
        np.testing.assert_array_equal(values[0], FP8_E4M3.decode(ref) / ts)


def test_mac_share_counts_the_forward_of_mxfp4_as_16_bit():
    from q4core.nn.macs import mac_share
    from q4core.nn.models import build_model
    net = build_model("mlp", (64,), 10, hidden=(32, 32))
    nv, mx = mac_share(net, (64,), "nvfp4"), mac_share(net, (64,), "mxfp4")
    assert nv["forward_share"] > 0 and mx["forward_share"] == 0
    assert 0 < mx["share"] < nv["share"]


@pytest.mark.parametrize("name", ["nvfp4", "mxfp4"])
def test_gradient_fidelity_of_block_scaled_layers_leaves_training_alone(name):
    """Notebook 03's recorder measures block-scaled layers too (their own GEMMs, a twin's random streams), and
    recording does not change the run: the training streams are the layer's, untouched."""
    from q4core.experiments.gradients import GradientFidelityRecorder
    rec = GradientFidelityRecorder(every=2)
    kw = dict(task="digits", model="mlp", recipe=name, epochs=1, max_steps=6, progress=False, seed=0)
    with_rec = train(on_step=rec, **kw)
    without = train(**kw)
    assert with_rec["history"]["step_loss"] == without["history"]["step_loss"]
    assert with_rec["test_accuracy"] == without["test_accuracy"]
    assert [r["step"] for r in rec.records] == [2, 4, 6]          # the one 4-bit (middle) layer of the MLP
    for r in rec.records:
        assert 0.9 < r["dx_cos"] <= 1.0 and 0.9 < r["dw_cos"] <= 1.0
        assert 0.8 < r["dx_norm_ratio"] < 1.2 and 0.8 < r["dw_norm_ratio"] < 1.2
    again = GradientFidelityRecorder(every=2)
    train(on_step=again, **kw)
    assert again.records == rec.records
