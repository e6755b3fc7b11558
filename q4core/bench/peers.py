"""The GEMMs a user would reach for on a CPU instead of ours: ONNX Runtime's MLAS integer GEMMs.

* ``MatMulInteger`` (ONNX standard op): u8 x s8 -> int32, exact.  Our INT4 operands enter as they would for a
  user: the signed 4-bit codes of the left operand shifted to uint8 (``code + 8``) with ``a_zero_point = 8``,
  the right operand as int8 codes, a constant initializer (ORT pre-packs it once, as we pack our weights
  once).  The product is then exactly ours: :func:`check_matmul_integer` tests it.
* ``MatMulNBits`` (``com.microsoft`` contrib op, when the installed onnxruntime has it): float32 activations
  times 4-bit block-quantized weights (block 32, zero point 8, scale 1, so the weights are our INT4 codes),
  ``accuracy_level=4`` (activations quantized to int8 per block, MLAS's integer path).  Not exact in general:
  its result is compared with ours and the record says whether it matched.

Models are built in memory with the ``onnx`` helper API; sessions run with ``intra_op_num_threads`` = the
thread count, without spinning.  Both packages are the optional ``bench`` extra (``pip install -e ".[bench]"``);
:func:`peer_status` says whether they are there and, if not, how to get them.
"""
from __future__ import annotations

import numpy as np

__all__ = ["INSTALL_HINT", "peer_status", "PeerGemm", "matmul_integer", "matmul_nbits", "check_matmul_integer"]

INSTALL_HINT = 'pip install "q4core[bench]" (or pip install onnxruntime onnx)'
_OPSET = 13
_IR_VERSION = 8         # understood by every onnxruntime that has MatMulNBits
_NBITS_BLOCK = 32


def peer_status():
    """``{"available": bool, "onnxruntime": version or None, "onnx": version or None, "message"}``."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        return {"available": False, "onnxruntime": None, "onnx": None,
                "message": f"ONNX Runtime peer skipped ({exc.name} is not installed): {INSTALL_HINT}"}
    return {"available": True, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "message": f"onnxruntime {onnxruntime.__version__} (MLAS), onnx {onnx.__version__}"}


def _session(model, threads):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    # no spinning: the benchmark's paths take turns, and a pool thread spinning after its run would take a
    # core from the next path's OpenMP/BLAS threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


class PeerGemm:
    """One peer GEMM with its constant right operand: ``peer(a)`` runs it on the left operand ``a`` (as the
    peer takes it: uint8 for MatMulInteger, float32 for MatMulNBits) and returns the output array."""

    def __init__(self, name, model, threads, input_name="A"):
        self.name, self.threads, self._input = name, int(threads), input_name
        self._session = _session(model, threads)

    def __call__(self, a):
        return self._session.run(None, {self._input: a})[0]


def _graph(nodes, inputs, outputs, initializers, domains=()):
    from onnx import helper
    opsets = [helper.make_opsetid("", _OPSET)] + [helper.make_opsetid(d, 1) for d in domains]
    graph = helper.make_graph(nodes, "q4core_peer", inputs, outputs, initializer=initializers)
    return helper.make_model(graph, opset_imports=opsets, ir_version=_IR_VERSION)


def matmul_integer(b_codes, threads=1):
    """``MatMulInteger`` with the constant right operand ``b_codes`` (K, N) int8 (INT4 codes -8..7); call the
    returned :class:`PeerGemm` with ``int4_to_uint8(a_codes)``."""
    from onnx import TensorProto, helper, numpy_helper
    b = np.ascontiguousarray(b_codes, dtype=np.int8)
    if b.ndim != 2:
        raise ValueError(f"b_codes must be 2-D, got shape {b.shape}")
    K, N = b.shape
    model = _graph([helper.make_node("MatMulInteger", ["A", "B", "a_zero_point"], ["Y"])],
                   [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", K])],
                   [helper.make_tensor_value_info("Y", TensorProto.INT32, ["M", N])],
                   [numpy_helper.from_array(b, "B"), numpy_helper.from_array(np.array(8, np.uint8), "a_zero_point")])
    return PeerGemm("ort MatMulInteger u8s8", model, threads)


def int4_to_uint8(a_codes):
    """Signed INT4 codes (-8..7, int8) as MatMulInteger's uint8 left operand with zero point 8."""
    a = np.asarray(a_codes)
    if a.dtype.kind not in "iu" or (a.size and (a.min() < -8 or a.max() > 7)):
        raise ValueError(f"a_codes must be integer INT4 codes in -8..7, got dtype {a.dtype}"
                         + (f", range {a.min()}..{a.max()}" if a.size and a.dtype.kind in "iu" else ""))
    return (a.astype(np.int16) + 8).astype(np.uint8)


def has_matmul_nbits():
    """Whether the installed onnxruntime registers the ``com.microsoft`` ``MatMulNBits`` CPU kernel."""
    try:
        matmul_nbits(np.zeros((_NBITS_BLOCK, 1), np.int8))
    except Exception:       # any failure to build or load the op means: not there
        return False
    return True


def matmul_nbits(b_codes, threads=1, accuracy_level=4):
    """``MatMulNBits`` (4-bit, block 32, zero point 8, scale 1) whose weights are the INT4 codes ``b_codes``
    (K, N), K a multiple of 32; call the returned :class:`PeerGemm` with float32 activations (M, K)."""
    from onnx import TensorProto, helper, numpy_helper
    b = np.asarray(b_codes, dtype=np.int8)
    if b.ndim != 2 or b.shape[0] % _NBITS_BLOCK:
        raise ValueError(f"b_codes must be 2-D with K a multiple of {_NBITS_BLOCK}, got shape {b.shape}")
    K, N = b.shape
    blocks = K // _NBITS_BLOCK
    q = (b.astype(np.int16) + 8).astype(np.uint8).T.reshape(N, blocks, _NBITS_BLOCK)   # (N, blocks, 32) in 0..15
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)                  # low nibble first
    scales = np.ones(N * blocks, np.float32)
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft", K=K, N=N, bits=4,
                            block_size=_NBITS_BLOCK, accuracy_level=int(accuracy_level))
    model = _graph([node], [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", K])],
                   [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", N])],
                   [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "scales")],
                   domains=("com.microsoft",))
    return PeerGemm(f"ort MatMulNBits 4-bit (accuracy_level {accuracy_level})", model, threads)


def check_matmul_integer(a_codes, b_codes, threads=1):
    """MatMulInteger's int32 product of INT4 codes against :func:`q4core.gemm.int4_matmul`'s: ``(equal, peer,
    ours)``."""
    from .. import gemm
    a = np.asarray(a_codes, dtype=np.int8)
    b = np.asarray(b_codes, dtype=np.int8)
    peer = matmul_integer(b, threads)(int4_to_uint8(a))
    ours = gemm.int4_matmul(a, gemm.pack_int4(b), threads=threads)
    return bool(peer.dtype == ours.dtype and np.array_equal(peer, ours)), peer, ours
