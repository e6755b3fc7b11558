"""QuantGemm in q4: integer and simulated paths agree bit for bit over random shapes; corner cases."""
import numpy as np
import pytest

from q4core.formats import RADIX4_FP4
from q4core.nn.qgemm import QuantGemm
from q4core.recipe import get_recipe


def _pair(cfg_kw, unsigned, K):
    out = []
    for sim in (False, True):
        g = QuantGemm().configure(get_recipe("q4", simulate=sim, **cfg_kw), index=1, name="l")
        g.unsigned = unsigned
        out.append(g)
    return out


@pytest.mark.parametrize("seed", range(12))
def test_integer_equals_simulated_random_shapes(seed):
    rng = np.random.default_rng(seed)
    M, K, N = (int(v) for v in rng.integers(1, 40, 3))
    if seed % 4 == 0:
        M = 1500          # a long weight-gradient reduction: the float64 rescale branch
    unsigned = bool(seed % 2)
    cfg = [dict(), get_recipe("q4", "no-tpr").to_dict(), dict(grad_dx={"phase": 1}, grad_dw={"phase": 0}),
           get_recipe("q4", "int4-grad").to_dict()][seed % 4]
    cfg = {k: v for k, v in cfg.items() if k in ("grad_dx", "grad_dw")}
    x = rng.standard_normal((M, K)).astype(np.float32) * np.float32(10.0 ** rng.uniform(-3, 3))
    if unsigned:
        x = np.abs(x)
    w = rng.standard_normal((K, N)).astype(np.float32) * np.float32(0.1)
    gy = rng.standard_normal((M, N)).astype(np.float32) * np.float32(10.0 ** rng.uniform(-6, 1))
    results = []
    for gemm in _pair(cfg, unsigned, K):
        outs = []
        for _ in range(3):                # GradScale moves between calls
            y, ctx = gemm.forward(x, gemm.prepare_weight(w))
            gx, gw = gemm.backward(gy, ctx)
            outs += [y, gx, gw, gemm.alpha.grad.copy()]
        results.append(outs)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_zero_input_and_zero_gradient():
    gemm = QuantGemm().configure(get_recipe("q4"))
    x = np.zeros((3, 4), np.float32)
    w = np.zeros((4, 2), np.float32)
    y, ctx = gemm.forward(x, gemm.prepare_weight(w))
    np.testing.assert_array_equal(y, 0)
    gx, gw = gemm.backward(np.zeros((3, 2), np.float32), ctx)
    np.testing.assert_array_equal(gx, 0)
    np.testing.assert_array_equal(gw, 0)
    assert gemm.gradscale.exp is None        # an all-zero gradient does not set the scale


def test_nan_gradient_is_reported():
    gemm = QuantGemm().configure(get_recipe("q4"), name="fc")
    rng = np.random.default_rng(0)
    w = gemm.prepare_weight(rng.random((4, 2)).astype(np.float32))
    y, ctx = gemm.forward(rng.random((3, 4)).astype(np.float32), w)
    with pytest.raises(FloatingPointError, match="'fc'.*NaN or Inf"):
        gemm.backward(np.array([[np.nan, 0], [0, 0], [0, 0]], np.float32), ctx)


def test_gradscale_keeps_the_scaled_gradient_in_range_and_weight_grad_uses_fp4():
    gemm = QuantGemm().configure(get_recipe("q4", "no-tpr"))
    rng = np.random.default_rng(1)
    x = rng.random((5, 3)).astype(np.float32)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    gy = (rng.standard_normal((5, 4)) * 1e-4).astype(np.float32)
    y, ctx = gemm.forward(x, gemm.prepare_weight(w))
    gx, gw = gemm.backward(gy, ctx)
    s = gemm.gradscale.scale
    assert np.abs(gy).max() * s <= 1.0 < np.abs(gy).max() * s * 2
    # dL/dW = dequant(x)^T @ dequant(g): g on the radix-4 grid at scale 1/s
    gq = RADIX4_FP4.quantize(gy.astype(np.float64), 1.0 / s)
    xq = ctx.xop.dequantize()
    np.testing.assert_allclose(gw, xq.T @ gq, rtol=1e-6)
