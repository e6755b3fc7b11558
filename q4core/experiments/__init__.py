"""The computations behind the notebooks, one module per notebook, on the one training engine.

:mod:`.common` (the MLP runs of notebooks 02 and 03 on :func:`q4core.train.train`), :mod:`.rescaling`
(notebook 02), :mod:`.gradients` (notebook 03), :mod:`.stack` (02/03's cross-check of the full recipe),
:mod:`.full_training` (notebook 04), :mod:`.tpr_deep` (notebook 04's two-phase rounding on the ResNet: BatchNorm
running-statistics bias and backward-GEMM fidelity).  No module here has a trainer of its own: every run is
:func:`q4core.train.train` under a named recipe of :mod:`q4core.recipe`, recorded through its ``on_step`` hook,
and every quantized tensor is made by :mod:`q4core.recipe.operands`.
"""
