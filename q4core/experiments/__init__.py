"""Small, fast training experiments behind notebooks 02 (adaptive rescaling) and 03 (log gradients).

:mod:`.mlp` trains a small multilayer perceptron in numpy (float64, seeded) with fake quantization
(quantize -> dequantize with the :mod:`q4core.formats` reference quantizers) of weights, activations and
output gradients, and records what the notebooks plot: per-step ranges, quantization SNRs under several
scalings, gradient samples, GradScale scales.  :mod:`.rescaling` and :mod:`.gradients` turn those records
into the numbers of each figure.

Why a separate trainer: these notebooks need hooks into every step (ranges of each tensor, the same tensor
quantized several ways, every gradient format of the radix sweep) and must run in seconds for CI;
:mod:`q4core.nn` / :mod:`q4core.train` (the project's training stack) were not available when these
notebooks were written.  The range estimators (SAWB, PACT, GradScale) are :mod:`q4core.scaling`'s.
"""
