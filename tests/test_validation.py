"""q4core._validation: one place for argument checks; messages name the argument and what it got."""
import numpy as np
import pytest

from q4core._validation import check_bool, check_int, check_int_list, check_one_of, check_real


def test_check_int():
    assert check_int(np.int64(3), "n", min_value=1) == 3 and type(check_int(np.int64(3), "n")) is int
    assert check_int(None, "n", allow_none=True) is None
    for bad in (True, 1.0, "1", None):
        with pytest.raises(ValueError, match="n must be an int"):
            check_int(bad, "n")
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1 \(positive\), got 0"):
        check_int(0, "batch_size", min_value=1)
    with pytest.raises(ValueError, match=r"k must be an int in \[0, 3\], got 4"):
        check_int(4, "k", min_value=0, max_value=3)


def test_check_real():
    assert check_real(np.float32(0.5), "lr", positive=True) == 0.5
    with pytest.raises(ValueError, match="lr must be a finite positive number, got 0"):
        check_real(0, "lr", positive=True)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lr must be a finite"):
            check_real(bad, "lr")
    with pytest.raises(TypeError, match="lr must be a real number, got bool"):
        check_real(True, "lr")
    assert check_real(float("inf"), "x", finite=False) == float("inf")


def test_check_bool_one_of_and_lists():
    assert check_bool(np.bool_(True), "flag") is True
    with pytest.raises(TypeError, match="signed must be True or False, got 'no'"):
        check_bool("no", "signed")
    assert check_one_of("b", "mode", ("a", "b")) == "b"
    with pytest.raises(ValueError, match="phase must be one of 0, 1; got True"):
        check_one_of(True, "phase", (0, 1))
    assert check_int_list(3, "seeds") == [3] and check_int_list((0, np.int32(2)), "seeds") == [0, 2]
    with pytest.raises(ValueError, match="seeds must not be empty"):
        check_int_list([], "seeds")
    with pytest.raises(ValueError, match=r"seeds\[1\] must be an int >= 0"):
        check_int_list([0, -1], "seeds", min_value=0)
