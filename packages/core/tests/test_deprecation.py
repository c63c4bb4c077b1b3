"""renamed_kwargs: the old keyword is an alias with a FutureWarning that names the new one."""

import inspect
import warnings

import pytest

from layerwise_core import renamed_kwargs


@renamed_kwargs(ratio="mask_ratio", mask_id="mask_token_id")
def scaled(x: int, mask_ratio: float = 0.5, *, mask_token_id: int = 0) -> float:
    return x * mask_ratio + mask_token_id


class Collator:
    @renamed_kwargs(ratio="mask_ratio")
    def __init__(self, mask_token_id: int, mask_ratio: float = 0.15):
        self.mask_token_id, self.mask_ratio = mask_token_id, mask_ratio


def test_old_name_warns_names_the_new_one_and_gives_the_same_result():
    with pytest.warns(
        FutureWarning, match=r"scaled: the argument `ratio` is deprecated.*`mask_ratio`"
    ):
        old = scaled(4, ratio=0.25)
    assert old == scaled(4, mask_ratio=0.25) == 1.0
    with pytest.warns(FutureWarning, match="`mask_id`.*`mask_token_id`"):
        assert scaled(4, mask_id=3) == 5.0
    with pytest.warns(FutureWarning, match=r"^Collator: the argument `ratio`"):
        assert Collator(7, ratio=0.3).mask_ratio == 0.3


def test_new_names_and_positions_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scaled(4, 0.25) == scaled(4, mask_ratio=0.25) == 1.0
        assert Collator(7, 0.3).mask_ratio == 0.3


def test_both_names_is_an_error_and_the_warning_points_at_the_caller():
    with pytest.raises(TypeError, match="got both `ratio` .*pass only `mask_ratio`"):
        scaled(4, ratio=0.1, mask_ratio=0.2)
    with pytest.warns(FutureWarning) as record:
        scaled(1, ratio=0.5)
    assert record[0].filename == __file__  # stacklevel: the user's line, not the decorator's


def test_signature_shows_the_new_names_only():
    assert list(inspect.signature(scaled).parameters) == ["x", "mask_ratio", "mask_token_id"]
    with pytest.raises(ValueError, match="cannot rename"):
        renamed_kwargs(a="a")
