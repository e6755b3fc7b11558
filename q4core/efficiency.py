"""Transparent hardware-efficiency estimates for low-precision multiply-accumulate (MAC).

The paper's ">7x over FP16 systems" is an estimate, not a measurement.  This module
rebuilds estimates of that kind from published per-operation figures so every
assumption is written out and can be changed by the reader:

* energy per operation at 45 nm, from M. Horowitz, "Computing's energy problem (and what we
  can do about it)", ISSCC 2014 (the table most hardware papers quote); silicon area per operator
  from the area column that circulates beside it in slides attributed to Dally's NIPS 2015 tutorial -
  an attribution we could not verify (:data:`AREA_NOTE`), so density gains are unverified;
* **assumption** for widths the table lacks: an integer multiplier's energy and area grow
  with the square of its width (an array multiplier has ``n*n`` partial-product cells),
  an integer adder's linearly with its width.  ``scale_int_multiplier`` / ``scale_int_adder``
  do exactly that and nothing else.

A MAC is one multiply plus one accumulate-add.  The paper accumulates 4-bit products in
FP16, so its 4-bit MAC is "INT4 multiply + FP16 add"; we show that next to integer
accumulation, because the accumulate adder then dominates and caps the gain.  An integer
accumulator must hold the sums: an FP4 x INT4 product (radix-4 FP4 magnitudes up to 4**6 times
INT4 magnitudes up to 8) needs 16 bits plus sign, a sum over K <= 2**14 of them 32 bits - hence
INT32, not INT16.  INT4 x INT4 forward products can instead be summed in an adder tree
(:func:`adder_tree`) before one INT32 accumulate, which is how integer dot-product units avoid a
wide adder per MAC.  Two baselines: FP16 (the paper's ">7x over FP16") and FP16 multiply with FP32
accumulation (:data:`MIXED_BASELINE`), the MAC FP16 mixed-precision training actually runs.
Every operator cost carries its source (:attr:`OperatorCost.source`, :data:`CITATIONS`).

:func:`energy_estimate` sets :func:`compare_macs` against a claimed factor (notebook 05).  Nothing here is
measured or drawn: the measurements are :mod:`q4core.bench`'s, the figures :mod:`q4core.experiments.speed`'s.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SOURCE", "AREA_SOURCE", "CITATIONS", "ASSUMPTIONS", "HOROWITZ_45NM", "MIXED_BASELINE", "OperatorCost",
           "scale_int_multiplier", "scale_int_adder", "mac_cost", "MAC_RECIPES", "compare_macs", "energy_estimate",
           "bytes_per_value", "adder_tree", "AREA_NOTE"]


#: where the per-operation figures come from
SOURCE = ("M. Horowitz, \"Computing's energy problem (and what we can do about it)\", "
          "IEEE ISSCC 2014, pp. 10-14 (45 nm, 0.9 V)")

#: where the areas are said to come from (unverified: :data:`AREA_NOTE`)
AREA_SOURCE = ("unverified: the area column printed beside Horowitz's energies in slides attributed to W. Dally, "
               "\"High-Performance Hardware for Machine Learning\", NIPS 2015 tutorial (see AREA_NOTE)")

#: what could and could not be checked about the figures (checked December 2026 against the sources reachable
#: from this project's reference search)
AREA_NOTE = ("The energies (8/16/32-bit integer add 0.03/0.05/0.1 pJ, 8/32-bit integer multiply 0.2/3.1 pJ, "
             "FP16/FP32 add 0.4/0.9 pJ, FP16/FP32 multiply 1.1/3.7 pJ) are Horowitz's ISSCC 2014 table; all but "
             "the 16-bit integer add (used by no MAC here) were checked against secondary sources quoting that "
             "table (a paper's table citing Horowitz, code transcribing it), not against the paper itself. The "
             "areas (um^2) are NOT in Horowitz's paper as far as we could check: they circulate beside his "
             "energies in slides attributed to Dally's NIPS 2015 tutorial (and Han et al.'s), where they are said "
             "to come from a synthesis at 45 nm; we could not verify either attribution from a primary source, so "
             "the area column - and every density gain - is unverified.")

#: every assumption behind :func:`compare_macs`, in words (notebook 05 prints them)
ASSUMPTIONS = (
    "Energies per operator are Horowitz's 45 nm figures, areas the column printed beside them (source "
    "unverified: AREA_NOTE); ratios between operators are assumed "
    "to carry over to newer nodes (absolute values do not).",
    "A MAC is one multiplier plus one accumulate adder; registers, operand delivery, memory and control "
    "are left out, although on real chips they cost as much as or more than the arithmetic.",
    "Integer widths missing from the table are scaled from the 8-bit figures: multipliers with the "
    "square of the width (INT4 multiply = 1/4 of INT8), adders linearly.",
    "The paper's 4-bit MAC multiplies INT4 x INT4 (forward) or FP4 x INT4 (backward: a radix-4 FP4 value "
    "is a signed power of 4, so the product is a shift) and accumulates in FP16; both multiplies are "
    "costed as an INT4 multiplier.",
    "An integer accumulator is as wide as its sums need: INT32 for FP4 x INT4 products (17 bits each, "
    "summed over up to 2**14 terms) and for INT8 x INT8; INT16 would overflow.",
    "FP16 mixed-precision training multiplies in FP16 and accumulates in FP32, so 'FP16 mult, FP32 acc.' is "
    "the second baseline; gains against it are larger than against an all-FP16 MAC.",
    "An integer adder tree sums the K products of a dot-product unit before one accumulate into INT32: a "
    "tree of K - 1 adders whose width grows by one bit a level from the product width (INT4 x UINT4 "
    "products fit in 8 bits: |7 x 15| = 105); its cost per product is the tree's adders divided by K plus "
    "1/K of the INT32 accumulate (adder_tree).",
    "Density gain = baseline MAC area / MAC area: how many more MAC units fit on the same silicon, "
    "the kind of estimate behind the paper's '>7x over FP16'.",
)


@dataclass(frozen=True)
class OperatorCost:
    """Energy (pJ) and area (square micrometres) of one operator at 45 nm, and where the figures come from."""
    energy_pj: float
    area_um2: float
    source: str = ""


#: Horowitz, ISSCC 2014, 45 nm, 0.9 V: energy per operation and operator area.
HOROWITZ_45NM = {
    "int8_add": OperatorCost(0.03, 36.0),
    "int16_add": OperatorCost(0.05, 67.0),
    "int32_add": OperatorCost(0.1, 137.0),
    "fp16_add": OperatorCost(0.4, 1360.0),
    "fp32_add": OperatorCost(0.9, 4184.0),
    "int8_mult": OperatorCost(0.2, 282.0),
    "int32_mult": OperatorCost(3.1, 3495.0),
    "fp16_mult": OperatorCost(1.1, 1640.0),
    "fp32_mult": OperatorCost(3.7, 7700.0),
}


#: the source of each operator of :data:`HOROWITZ_45NM`: energy from the paper's table, area from its companion
CITATIONS = {name: f"energy: {SOURCE}; area: {AREA_SOURCE}" for name in HOROWITZ_45NM}
HOROWITZ_45NM = {name: OperatorCost(c.energy_pj, c.area_um2, CITATIONS[name]) for name, c in HOROWITZ_45NM.items()}


def _scaled(bits: int, reference: str, power: int) -> OperatorCost:
    """The ``reference`` operator (``int<N>_...``) scaled to ``bits`` width by ``(bits / N) ** power``."""
    if bits < 1:
        raise ValueError(f"bits must be >= 1, got {bits}")
    ref = HOROWITZ_45NM[reference]
    width = int(reference.split("_")[0][3:])
    f = (bits / width) ** power
    rule = "squared" if power == 2 else "linear"
    return OperatorCost(ref.energy_pj * f, ref.area_um2 * f,
                        f"assumption: {reference} of Horowitz (ISSCC 2014, 45 nm) scaled by (width / {width}) "
                        f"** {power} ({rule} in the width)")


def scale_int_multiplier(bits: int, reference: str = "int8_mult") -> OperatorCost:
    """Integer multiplier of ``bits`` width, scaled quadratically from the 8-bit figure."""
    return _scaled(bits, reference, 2)


def scale_int_adder(bits: int, reference: str = "int8_add") -> OperatorCost:
    """Integer adder of ``bits`` width, scaled linearly from the 8-bit figure."""
    return _scaled(bits, reference, 1)


def adder_tree(product_bits: int, k: int) -> OperatorCost:
    """Adder cost per product of summing ``k`` (a power of two) ``product_bits``-wide products in a binary adder
    tree and adding the tree's sum to an INT32 accumulator: level ``l = 1..log2 k`` has ``k / 2**l`` adders of
    ``product_bits + l`` bits (each level's sums need one more bit), every adder scaled linearly from the
    8-bit one (:func:`scale_int_adder`); the total plus one ``int32_add``, divided by ``k``."""
    if isinstance(product_bits, bool) or not isinstance(product_bits, int) or product_bits < 1:
        raise ValueError(f"product_bits must be an integer >= 1, got {product_bits!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 2 or k & (k - 1):
        raise ValueError(f"k must be a power of two >= 2 (the products one tree sums), got {k!r}")
    energy, area, level = 0.0, 0.0, 1
    while k >> level:
        adder = scale_int_adder(product_bits + level)
        energy += (k >> level) * adder.energy_pj
        area += (k >> level) * adder.area_um2
        level += 1
    acc = HOROWITZ_45NM["int32_add"]
    return OperatorCost((energy + acc.energy_pj) / k, (area + acc.area_um2) / k,
                        f"assumption: a {k}-input adder tree of {product_bits}-bit products (int8_add of Horowitz, "
                        f"ISSCC 2014, scaled linearly in the width) plus one int32_add per {k} products")


def _operator(name: str) -> OperatorCost:
    if name in HOROWITZ_45NM:
        return HOROWITZ_45NM[name]
    if name.startswith("tree"):
        # "tree<product bits>x<k>": an adder tree, cost per product (adder_tree)
        bits, _, k = name[4:].partition("x")
        if bits.isdigit() and k.isdigit():
            return adder_tree(int(bits), int(k))
        raise KeyError(f"an adder tree is named tree<product bits>x<k>, got {name!r}")
    kind, op = name.split("_")
    if kind.startswith("int") and op == "mult":
        return scale_int_multiplier(int(kind[3:]))
    if kind.startswith("int") and op == "add":
        return scale_int_adder(int(kind[3:]))
    raise KeyError(f"no cost known for operator {name!r}")


def mac_cost(multiplier: str, adder: str) -> OperatorCost:
    """Cost of one MAC: ``multiplier`` (e.g. ``"int4_mult"``) plus ``adder`` (e.g. ``"fp16_add"``)."""
    m, a = _operator(multiplier), _operator(adder)
    return OperatorCost(m.energy_pj + a.energy_pj, m.area_um2 + a.area_um2,
                        f"{multiplier}: {m.source} | {adder}: {a.source}")


#: The MACs compared in notebook 05: name -> (multiplier, accumulate adder).
MAC_RECIPES = {
    "FP32": ("fp32_mult", "fp32_add"),
    "FP16": ("fp16_mult", "fp16_add"),
    "FP16 mult, FP32 acc.": ("fp16_mult", "fp32_add"),
    "INT8, INT32 acc.": ("int8_mult", "int32_add"),
    "INT4, FP16 acc. (paper)": ("int4_mult", "fp16_add"),
    "FP4 x INT4, INT32 acc.": ("int4_mult", "int32_add"),
    "INT4, adder tree (16)": ("int4_mult", "tree8x16"),
}
#: the MAC of FP16 mixed-precision training: FP16 multiply, FP32 accumulate
MIXED_BASELINE = "FP16 mult, FP32 acc."


def compare_macs(baseline: str = "FP16", recipes=None):
    """Energy and area of each MAC recipe and its advantage over ``baseline``.

    Returns a list of dicts ``{name, multiplier, adder, energy_pj, area_um2, energy_gain, density_gain,
    source}`` (``source``: the citation or assumption behind each operator's figures) where
    ``density_gain`` is the baseline's area over the recipe's area: how many more MACs
    fit in the same silicon (the kind of number behind ">7x over FP16").
    """
    recipes = MAC_RECIPES if recipes is None else recipes
    if baseline not in recipes:
        raise KeyError(f"baseline {baseline!r} is not one of {sorted(recipes)}")
    base = mac_cost(*recipes[baseline])
    rows = []
    for name, (mult, add) in recipes.items():
        c = mac_cost(mult, add)
        rows.append({"name": name, "multiplier": mult, "adder": add,
                     "energy_pj": c.energy_pj, "area_um2": c.area_um2,
                     "energy_gain": base.energy_pj / c.energy_pj,
                     "density_gain": base.area_um2 / c.area_um2, "source": c.source})
    return rows


def energy_estimate(claimed: float = 7.0, baseline: str = "FP16"):
    """Per-MAC energy and area of each recipe of :data:`MAC_RECIPES` against ``baseline``, set against a
    claimed factor (the paper's ">7x over FP16").

    Returns ``{"rows": compare_macs(baseline), "claimed", "baseline", "above_claim": [names whose density
    gain reaches the claim], "mixed_baseline": MIXED_BASELINE, "rows_mixed": compare_macs(MIXED_BASELINE),
    "above_claim_mixed", "assumptions": list(ASSUMPTIONS), "source": SOURCE, "area_source": AREA_SOURCE,
    "area_note": AREA_NOTE}``.
    """
    rows = compare_macs(baseline)
    mixed = compare_macs(MIXED_BASELINE)
    return {"rows": rows, "claimed": float(claimed), "baseline": baseline,
            "above_claim": [r["name"] for r in rows if r["density_gain"] >= claimed],
            "mixed_baseline": MIXED_BASELINE, "rows_mixed": mixed,
            "above_claim_mixed": [r["name"] for r in mixed if r["density_gain"] >= claimed],
            "assumptions": list(ASSUMPTIONS), "source": SOURCE, "area_source": AREA_SOURCE, "area_note": AREA_NOTE}


def bytes_per_value(bits: int) -> float:
    """Storage of one value of a ``bits``-wide format when packed densely."""
    if bits < 1:
        raise ValueError(f"bits must be >= 1, got {bits}")
    return bits / 8.0
