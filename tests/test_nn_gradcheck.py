"""Every layer's backward against central finite differences, run in float64 (fp32 policy)."""
import numpy as np
import pytest

from q4core.nn import (
    GRU,
    LSTM,
    AvgPool2d,
    BatchNorm,
    CausalSelfAttention,
    Conv1d,
    Conv2d,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool,
    LayerNorm,
    Linear,
    MaxPool1d,
    MaxPool2d,
    ReLU,
    Sequential,
    softmax_cross_entropy,
)


def _to_float64(module):
    for p in module.parameters():
        p.data = p.data.astype(np.float64)
        p.grad = np.zeros_like(p.data)
    return module


def _check(module, x, seed=0, reset=None, check_input=True, eps=1e-6, rtol=1e-5, atol=1e-7):
    """Compare backward with finite differences of L = sum(forward(x) * R) for x and every parameter."""
    _to_float64(module)
    rng = np.random.default_rng(seed)

    def run(inp):
        if reset:
            reset()
        return module.forward(inp)

    y = run(x)
    R = rng.standard_normal(y.shape)
    module.zero_grad()
    gx = module.backward(R)

    def loss():
        return float(np.sum(run(x) * R))

    targets = [(n, p.data, p.grad) for n, p in module.named_parameters() if not n.endswith("gemm.alpha")]
    if check_input:
        targets.append(("x", x, gx))
    for name, arr, grad in targets:
        flat = arr.reshape(-1)
        idx = rng.choice(flat.size, size=min(flat.size, 25), replace=False)
        for i in idx:
            old = flat[i]
            flat[i] = old + eps
            up = loss()
            flat[i] = old - eps
            down = loss()
            flat[i] = old
            fd = (up - down) / (2 * eps)
            an = grad.reshape(-1)[i]
            assert abs(fd - an) <= atol + rtol * max(abs(fd), abs(an)), \
                f"{type(module).__name__} {name}[{i}]: finite difference {fd} vs backward {an}"


def _x(shape, seed=1, positive=False):
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.abs(x) + 0.1 if positive else x


def test_linear():
    _check(Linear(5, 3, rng=0), _x((4, 5)))


def test_linear_3d_input():
    _check(Linear(4, 2, rng=1), _x((2, 3, 4)))


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), (1, 2)])
def test_conv2d(stride, padding):
    _check(Conv2d(2, 3, 3, stride=stride, padding=padding, rng=2), _x((2, 2, 6, 5)))


def test_conv1d():
    _check(Conv1d(3, 4, 3, padding=1, rng=3), _x((2, 3, 7)))


def test_relu():
    _check(ReLU(), _x((3, 7)))


def test_max_and_avg_pool():
    # distinct values so the maximum is unique and the finite difference does not cross a tie
    x = np.random.default_rng(4).permutation(2 * 2 * 5 * 4).reshape(2, 2, 5, 4) * 0.1
    _check(MaxPool2d(2), x.astype(np.float64))
    _check(AvgPool2d(2), _x((2, 2, 5, 4)))
    _check(MaxPool1d(2), np.random.default_rng(5).permutation(2 * 3 * 7).reshape(2, 3, 7) * 0.1)
    _check(GlobalAvgPool(), _x((2, 3, 4)))


def test_flatten_in_sequence():
    _check(Sequential(Conv2d(1, 2, 3, rng=4), ReLU(), Flatten(), Linear(2 * 9, 3, rng=5)), _x((2, 1, 5, 5)))


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 2, 3), (3, 4, 5)])
def test_batchnorm_train(shape):
    _check(BatchNorm(4), _x(shape))


def test_batchnorm_eval():
    bn = BatchNorm(3)
    bn.forward(_x((5, 3)).astype(np.float32))
    bn.eval()
    _check(bn, _x((4, 3), seed=2))


def test_dropout_with_fixed_mask():
    d = Dropout(0.4, rng=0)

    def reset():
        d._rng = np.random.default_rng(7)
    _check(d, _x((4, 6)), reset=reset)


def test_embedding():
    ids = np.array([[0, 3, 3], [2, 1, 0]])
    _check(Embedding(4, 5, rng=0), ids, check_input=False)


def test_layernorm():
    _check(LayerNorm(5), _x((2, 3, 5)))


@pytest.mark.parametrize("heads", [1, 2])
def test_causal_attention(heads):
    _check(CausalSelfAttention(4, heads=heads, rng=1), _x((2, 5, 4)))


def test_attention_is_causal():
    att = CausalSelfAttention(4, heads=2, rng=1)
    x = _x((1, 6, 4)).astype(np.float32)
    y1 = att.forward(x)
    x2 = x.copy()
    x2[0, 4:] += 1.0
    y2 = att.forward(x2)
    np.testing.assert_array_equal(y1[0, :4], y2[0, :4])
    assert not np.allclose(y1[0, 4:], y2[0, 4:])


def test_lstm():
    _check(LSTM(3, 4, rng=2), _x((2, 5, 3)))


def test_gru():
    _check(GRU(3, 4, rng=2), _x((2, 5, 3)))


def test_softmax_cross_entropy_gradient():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((5, 4))
    y = rng.integers(0, 4, 5)
    loss, g = softmax_cross_entropy(z, y)
    eps = 1e-6
    for i in range(z.size):
        zp, zm = z.copy().reshape(-1), z.copy().reshape(-1)
        zp[i] += eps
        zm[i] -= eps
        fd = (softmax_cross_entropy(zp.reshape(z.shape), y)[0]
              - softmax_cross_entropy(zm.reshape(z.shape), y)[0]) / (2 * eps)
        assert abs(fd - g.reshape(-1)[i]) < 1e-5
    # the loss of a uniform prediction is log(C)
    assert softmax_cross_entropy(np.zeros((3, 4)), np.array([0, 1, 3]))[0] == pytest.approx(np.log(4))


def test_softmax_cross_entropy_bad_labels():
    with pytest.raises(ValueError, match="labels must lie"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="labels shape"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="labels must be integers"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))


def test_the_check_catches_a_wrong_backward():
    class Doubled(ReLU):
        def backward(self, grad_y):
            return 2.0 * super().backward(grad_y)
    with pytest.raises(AssertionError, match="finite difference"):
        _check(Doubled(), _x((3, 4)))


def test_maxpool_ties_send_the_gradient_to_the_first_maximum():
    x = np.zeros((1, 1, 2, 4), np.float32)
    x[0, 0, :, 2:] = [[1.0, 3.0], [3.0, 3.0]]
    pool = MaxPool2d(2)
    np.testing.assert_array_equal(pool.forward(x), [[[[0.0, 3.0]]]])
    g = pool.backward(np.array([[[[5.0, 7.0]]]], np.float32))
    np.testing.assert_array_equal(g, [[[[5.0, 0.0, 0.0, 7.0], [0.0, 0.0, 0.0, 0.0]]]])
