import pytest

from q4core import efficiency as eff


def test_table_values_are_the_published_ones():
    t = eff.HOROWITZ_45NM
    assert t["int8_mult"].energy_pj == 0.2 and t["int32_mult"].energy_pj == 3.1
    assert t["fp16_mult"].energy_pj == 1.1 and t["fp32_mult"].energy_pj == 3.7
    assert t["int8_add"].energy_pj == 0.03 and t["fp16_add"].energy_pj == 0.4
    assert t["fp32_add"].energy_pj == 0.9


def test_scaling_rules():
    # quadratic multiplier: 4 bits is a quarter of 8 bits; 32 bits from 8 bits is 16x
    assert eff.scale_int_multiplier(4).energy_pj == pytest.approx(0.05)
    assert eff.scale_int_multiplier(8).area_um2 == pytest.approx(282.0)
    assert eff.scale_int_adder(16).energy_pj == pytest.approx(0.06)
    with pytest.raises(ValueError, match="bits"):
        eff.scale_int_multiplier(0)


def test_mac_comparison_against_fp16():
    rows = {r["name"]: r for r in eff.compare_macs("FP16")}
    assert rows["FP16"]["energy_gain"] == pytest.approx(1.0)
    paper = rows["INT4, FP16 acc. (paper)"]
    # INT4 multiply (0.05 pJ) + FP16 add (0.4 pJ) against 1.1 + 0.4 pJ
    assert paper["energy_pj"] == pytest.approx(0.45)
    assert paper["energy_gain"] == pytest.approx(1.5 / 0.45)
    assert rows["FP4 x INT4, INT32 acc."]["energy_gain"] > paper["energy_gain"]
    with pytest.raises(KeyError, match="baseline"):
        eff.compare_macs("FP64")


def test_unknown_operator():
    with pytest.raises(KeyError, match="operator"):
        eff.mac_cost("bf16_mult", "fp32_add")


def test_source_and_assumptions_are_written_out():
    assert "Horowitz" in eff.SOURCE and "ISSCC 2014" in eff.SOURCE and "45 nm" in eff.SOURCE
    text = " ".join(eff.ASSUMPTIONS)
    # the scaling rule used by scale_int_multiplier / scale_int_adder is stated in words
    assert "square of the width" in text and "linearly" in text and "FP16" in text
    assert all(isinstance(a, str) and a.endswith(".") for a in eff.ASSUMPTIONS)


def test_energy_estimate_against_the_claim():
    est = eff.energy_estimate(claimed=7.0)
    rows = {r["name"]: r for r in est["rows"]}
    assert rows["FP16"]["density_gain"] == 1.0 and est["baseline"] == "FP16" and est["claimed"] == 7.0
    # FP16 MAC area 1640 + 1360; the paper's INT4 x INT4 with FP16 accumulation: 282 / 4 + 1360
    assert rows["INT4, FP16 acc. (paper)"]["density_gain"] == pytest.approx(3000 / (70.5 + 1360))
    # FP4 x INT4 sums need 32 bits: INT4 multiplier + INT32 adder (137 um^2)
    assert rows["FP4 x INT4, INT32 acc."]["density_gain"] == pytest.approx(3000 / (70.5 + 137))
    assert est["above_claim"] == [n for n, r in rows.items() if r["density_gain"] >= 7.0]
    assert "INT4, FP16 acc. (paper)" not in est["above_claim"] and "FP4 x INT4, INT32 acc." in est["above_claim"]
    assert not any("INT16" in n for n in rows)
    assert est["assumptions"] == list(eff.ASSUMPTIONS) and "Horowitz" in est["source"]
    assert eff.energy_estimate(claimed=1e9)["above_claim"] == []
    with pytest.raises(KeyError, match="baseline"):
        eff.energy_estimate(baseline="FP64")


def test_bytes_per_value():
    assert eff.bytes_per_value(4) == 0.5 and eff.bytes_per_value(32) == 4.0
    with pytest.raises(ValueError, match="bits"):
        eff.bytes_per_value(0)


def test_mixed_precision_baseline():
    est = eff.energy_estimate(claimed=7.0)
    assert est["mixed_baseline"] == eff.MIXED_BASELINE == "FP16 mult, FP32 acc."
    mixed = {r["name"]: r for r in est["rows_mixed"]}
    assert mixed[eff.MIXED_BASELINE]["density_gain"] == 1.0
    # FP16 multiply (1.1 pJ, 1640 um^2) + FP32 add (0.9 pJ, 4184 um^2) against the paper's INT4 x FP16-add MAC
    paper = mixed["INT4, FP16 acc. (paper)"]
    assert paper["energy_gain"] == pytest.approx(2.0 / 0.45)
    assert paper["density_gain"] == pytest.approx(5824 / 1430.5)
    assert est["above_claim_mixed"] == [n for n, r in mixed.items() if r["density_gain"] >= 7.0]
    # against the mixed baseline every recipe gains more than against all-FP16
    fp16 = {r["name"]: r for r in est["rows"]}
    assert all(mixed[n]["density_gain"] > fp16[n]["density_gain"] for n in mixed)


def test_every_figure_names_its_source():
    for name, cost in eff.HOROWITZ_45NM.items():
        assert "Horowitz" in cost.source and "ISSCC 2014" in cost.source and "Dally" in cost.source
        assert eff.CITATIONS[name] == cost.source
    assert "assumption" in eff.scale_int_multiplier(4).source and "** 2" in eff.scale_int_multiplier(4).source
    assert "** 1" in eff.scale_int_adder(16).source
    for row in eff.compare_macs():
        assert row["multiplier"] in row["source"] and row["adder"] in row["source"]


def test_adder_tree_written_out():
    # 4 products of 8 bits: two 9-bit adders, one 10-bit adder, one int32 accumulate, per 4 products
    a9, a10 = eff.scale_int_adder(9), eff.scale_int_adder(10)
    acc = eff.HOROWITZ_45NM["int32_add"]
    tree = eff.adder_tree(8, 4)
    assert tree.energy_pj == pytest.approx((2 * a9.energy_pj + a10.energy_pj + acc.energy_pj) / 4)
    assert tree.area_um2 == pytest.approx((2 * a9.area_um2 + a10.area_um2 + acc.area_um2) / 4)
    # 0.03 pJ per 8 bits: (2 * 9 + 10) * 0.03 / 8 = 0.105 pJ plus 0.1 pJ, over 4 products
    assert tree.energy_pj == pytest.approx((0.105 + 0.1) / 4)


def test_adder_tree_is_cheaper_than_an_int32_accumulate_per_product():
    rows = {r["name"]: r for r in eff.compare_macs("FP16")}
    tree, acc = rows["INT4, adder tree (16)"], rows["FP4 x INT4, INT32 acc."]
    assert tree["adder"] == "tree8x16" and tree["energy_pj"] < acc["energy_pj"]
    assert "adder tree" in tree["source"] and "int32_add" in tree["source"]
    assert eff.mac_cost("int4_mult", "tree8x16").energy_pj == pytest.approx(
        eff.scale_int_multiplier(4).energy_pj + eff.adder_tree(8, 16).energy_pj)


@pytest.mark.parametrize("bits, k, match", [(0, 4, "product_bits"), (8, 3, "k must be a power of two"),
                                            (8, 1, "k must be a power of two"), (8, True, "k must")])
def test_adder_tree_rejects_bad_arguments(bits, k, match):
    with pytest.raises(ValueError, match=match):
        eff.adder_tree(bits, k)


def test_malformed_tree_name_is_named():
    with pytest.raises(KeyError, match="tree<product bits>x<k>"):
        eff.mac_cost("int4_mult", "tree8")


def test_area_attribution_is_marked_unverified():
    est = eff.energy_estimate()
    assert "unverified" in est["area_note"] and "unverified" in est["area_source"]
    assert "INT4, adder tree (16)" in {r["name"] for r in est["rows"]}
