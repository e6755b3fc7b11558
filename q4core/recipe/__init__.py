"""Precision recipes: per GEMM operand role (weight, activation, gradient into dL/dx, gradient into dL/dW)
a format, a scaling rule, a rounding and a two-phase-rounding phase; a registry of named recipes and
ablations; the one operand quantizer.  Data flows downhill: a notebook parameter names a recipe, the
model's layers take it (``Module.set_policy``), each layer's :class:`~q4core.nn.qgemm.QuantGemm` makes its
operands with :mod:`q4core.recipe.operands` and hands them to the kernels.

>>> from q4core.recipe import get_recipe
>>> r = get_recipe("q4", ablation="no-tpr")
>>> r.name, r.grad_dx.format, r.grad_dw.phase
('q4+no-tpr', 'radix4', 0)
"""
from .operands import Operand
from .registry import (
           ABLATIONS,
           BLOCK_ABLATIONS,
           BLOCK_SCALED,
           PRESETS,
           STUDIES,
           SWEEP_GRAD_FORMATS,
           get_recipe,
           grad_recipe,
           recipe_names,
)
from .spec import ROLES, OperandSpec, Recipe

__all__ = ["Recipe", "OperandSpec", "Operand", "ROLES", "PRESETS", "ABLATIONS", "BLOCK_SCALED", "BLOCK_ABLATIONS",
           "STUDIES",
           "SWEEP_GRAD_FORMATS", "get_recipe", "grad_recipe", "recipe_names"]
