"""Measurements of what 4-bit arithmetic buys on the machine at hand; ``python -m q4core.bench NAME``.

Every measurement is a plain function returning plain dicts and lists - no printing, no plotting, no argv:

* :mod:`.gemm` - GEMM throughput of every kernel path against numpy float32 measured in the same run
  (:func:`~.gemm.measure_gemm`), the kernels' exactness (:func:`~.gemm.check_kernels`), speed-up summaries;
* :mod:`.ceiling` - the per-ISA ceiling: the rate of each kernel's inner instruction issued back to back (a
  small C probe built at bench time); :mod:`.peers` - ONNX Runtime's MLAS integer GEMMs, timed next to ours;
* :mod:`.quantize` - compiled INT4 / radix-4 FP4 encode+pack throughput against the numpy chain;
* :mod:`.train` - one training step under fp32, q4 and simulated q4, GEMM-heavy workloads, and where a q4
  step's time goes (integer GEMMs, operand making, rescale, float GEMMs, the rest);
* :mod:`.layer` - the per-call cost of a quantized Linear layer's forward and backward beyond its integer
  GEMMs (issue 12's 30 us at 64x64x64);
* :mod:`.memory` - bytes per stored value, per parameter and per activation, counted on real arrays;
* :mod:`.cpu` - what this CPU offers: features, kernels, MACs per instruction of its units.

:mod:`.report` turns the results into text tables; :mod:`.cli` (``python -m q4core.bench
{quantize,gemm,train,layer}``) parses arguments, calls the functions and prints the tables.  Notebook 05 calls the
functions directly and draws with :mod:`q4core.experiments.speed`.  Speed targets live here, never in timed
unit tests; every benchmark reports ratios against a numpy baseline measured in the same run.
"""
