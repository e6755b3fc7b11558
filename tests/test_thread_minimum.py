"""Minimum work per OpenMP thread (gemm_threads.h, quant_kernels.h): small calls run on fewer threads,
and no result depends on the thread count on either side of the thresholds."""
import numpy as np
import pytest

import q4core.gemm as gemm
from q4core import _gemm, _quant, quant
from q4core.formats import INT4_SYM, RADIX4_FP4

FAST = [k for k in gemm.available_kernels() if k != "reference"]
LIMIT = gemm.kernel_info()["thread_limit"]


def test_gemm_thread_count_follows_the_work():
    per = _gemm.GEMM_MACS_PER_THREAD
    assert per == 1 << 24 and _gemm.PACK_BYTES_PER_THREAD == 1 << 18
    # 64 x 64 x 64 is 2**18 MACs: one thread whatever is asked for
    assert _gemm.threads_for_work(LIMIT, 64, 64 ** 3, per) == 1
    assert _gemm.threads_for_work(LIMIT, 64, 3 * per - 1, per) == min(LIMIT, 2)
    assert _gemm.threads_for_work(1, 64, 64 * per, per) == 1          # never more than requested
    assert _gemm.threads_for_work(LIMIT, 1, 64 * per, per) == 1       # nor more than the work items
    assert _gemm.threads_for_work(10 ** 6, 10 ** 6, 10 ** 12, per) == LIMIT   # nor the processors
    assert _gemm.threads_for_work(LIMIT, 64, 0, per) == 1


def test_quantize_thread_count_follows_the_work():
    per = _quant.ELEMS_PER_THREAD
    assert per == 1 << 18
    assert _quant.threads_for_elems(LIMIT, per - 1) == 1
    assert _quant.threads_for_elems(LIMIT, 2 * per) == min(LIMIT, 2)
    assert _quant.threads_for_elems(LIMIT, 100 * per) == LIMIT
    assert _quant.threads_for_elems(0, 100 * per) == 1


@pytest.mark.parametrize("kernel", FAST)
@pytest.mark.parametrize("m,k,n", [(64, 64, 64), (40, 700, 60), (300, 512, 272)])
def test_gemms_identical_for_any_thread_count(kernel, m, k, n):
    # (300, 512, 272): Mp * Np * Kp above 2 * 2**24, so two threads really run where there are two
    rng = np.random.default_rng(m + k + n)
    a = rng.integers(-8, 8, (m, k)).astype(np.int8)
    b = rng.integers(0, 16, (k, n)).astype(np.uint8)
    g = RADIX4_FP4.encode(rng.standard_normal((m, k)) * np.exp2(rng.uniform(-12, 0, (m, k))))
    gt = RADIX4_FP4.encode(rng.standard_normal((k, n)) * np.exp2(rng.uniform(-12, 0, (k, n))))
    ref = a.astype(np.int64) @ b.astype(np.int64)
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(gemm.int4_matmul(a, b, kernel=kernel, threads=threads), ref)
    outs = [gemm.fp4_int4_matmul(g, b, kernel=kernel, threads=t) for t in (1, 2)]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], gemm.fp4_int4_matmul(g, b, kernel="reference"))
    outs = [gemm.int4_fp4_matmul(a, gt, kernel=kernel, threads=t) for t in (1, 2)]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], gemm.int4_fp4_matmul(a, gt, kernel="reference"))


@pytest.mark.parametrize("n", [1000, (1 << 18) + 3, 3 * (1 << 18) + 1])
def test_quantizers_identical_for_any_thread_count(n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    for fmt in (INT4_SYM, RADIX4_FP4):
        ref = fmt.encode(x, 0.5, backend="numpy")
        for threads in (1, 2, 3):
            np.testing.assert_array_equal(quant.encode(fmt, x, 0.5, threads=threads), ref)
            np.testing.assert_array_equal(
                quant.unpack_nibbles(quant.encode_packed(fmt, x, 0.5, threads=threads), n,
                                     signed=fmt is INT4_SYM), ref)


@pytest.mark.parametrize("var, default, user_value", [
    ("OMP_WAIT_POLICY", "PASSIVE", None), ("OMP_WAIT_POLICY", "PASSIVE", "ACTIVE"),
    ("OPENBLAS_THREAD_TIMEOUT", "4", None), ("OPENBLAS_THREAD_TIMEOUT", "4", "20")])
def test_idle_threads_sleep_at_once_unless_the_user_chose(var, default, user_value):
    """Importing q4core sets, before libgomp and numpy's OpenBLAS load, the defaults that make their idle threads
    sleep rather than spin (OMP_WAIT_POLICY=PASSIVE; OPENBLAS_THREAD_TIMEOUT=4, OpenBLAS's minimum): a spinning
    thread holds the core that a two-thread 4-bit GEMM needs next.  A value the user set is kept."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != var}
    if user_value is not None:
        env[var] = user_value
    # what the variable holds at the moment numpy (and with it OpenBLAS) is first imported, and after
    code = f"""
import builtins, os
seen = []
real_import = builtins.__import__
def spy(name, *args, **kwargs):
    if name.split(".")[0] == "numpy" and not seen:
        seen.append(os.environ.get({var!r}))
    return real_import(name, *args, **kwargs)
builtins.__import__ = spy
import q4core.gemm
print(seen[0], os.environ[{var!r}])
"""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [user_value or default] * 2
