"""``gif.result_warnings.retained_drop_warnings``: the rule behind ``retained_accuracy_drop``."""

from __future__ import annotations

import math

import pytest

from gif.result_warnings import RETAINED_DROP_LIMIT, retained_drop_warnings


@pytest.mark.parametrize(("before", "after", "warned"), [
    (0.95, 0.60, True),
    (0.95, 0.95 - RETAINED_DROP_LIMIT - 0.001, True),
    (0.95, 0.95 - RETAINED_DROP_LIMIT + 0.001, False),
    (0.90, 0.93, False),  # better than before
])
def test_a_drop_beyond_the_limit_is_warned(before, after, warned):
    found = retained_drop_warnings({"validation_accuracy": before},
                                   {"validation_accuracy": after})
    assert [w["code"] for w in found] == (["retained_accuracy_drop"] if warned else [])


@pytest.mark.parametrize("chosen", [{}, {"validation_accuracy": math.nan}, None,
                                    {"validation_accuracy": "0.5"}])
def test_missing_or_unusable_accuracies_warn_nothing(chosen):
    assert retained_drop_warnings({"validation_accuracy": 0.9}, chosen) == []
    assert retained_drop_warnings(None, {"validation_accuracy": 0.1}) == []
