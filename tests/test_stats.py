import math

from scipy import stats

from cifarkit.stats import betainc, describe, one_sided_p_value, student_t_sf


def test_t_tail_matches_scipy():
    for t in (-4.0, -1.2, 0.0, 0.3, 1.7, 2.5, 8.0):
        for df in (1, 2, 4, 9, 24, 199):
            assert math.isclose(student_t_sf(t, df), stats.t.sf(t, df), rel_tol=1e-9, abs_tol=1e-14)


def test_betainc_edges_and_symmetry():
    assert betainc(2, 3, 0) == 0 and betainc(2, 3, 1) == 1
    assert math.isclose(betainc(2.5, 1.5, 0.3), 1 - betainc(1.5, 2.5, 0.7), rel_tol=1e-12)


def test_one_sided_p_value_direction():
    high = [0.941, 0.943, 0.942, 0.944]
    low = [0.935, 0.937, 0.936, 0.938]
    assert one_sided_p_value(high, 0.94) < 0.05
    assert one_sided_p_value(low, 0.94) > 0.95
    assert one_sided_p_value([0.95], 0.94) is None
    d = describe([1.0, 2.0, 4.0])
    assert d["n"] == 3 and d["median"] == 2.0 and math.isclose(d["mean"], 7 / 3)


def test_one_sided_p_value_matches_scipy_ttest():
    samples = [0.9405, 0.9431, 0.9388, 0.9422, 0.9417]
    expected = stats.ttest_1samp(samples, 0.94, alternative="greater").pvalue
    assert math.isclose(one_sided_p_value(samples, 0.94), expected, rel_tol=1e-9)
