"""nearest_rank, the percentile of raw samples behind the limiter's and the benchmarks' p99s."""

from __future__ import annotations

import pytest

from services.common.quantile import nearest_rank


@pytest.mark.parametrize(("q", "expected"), [
    (0.0, 1.0), (0.01, 1.0), (0.10, 1.0), (0.11, 2.0), (0.50, 5.0), (0.51, 6.0),
    (0.99, 10.0), (1.0, 10.0)])
def test_nearest_rank_of_ten(q: float, expected: float) -> None:
    assert nearest_rank([7, 3, 10, 1, 9, 2, 8, 4, 6, 5], q) == expected  # unsorted input


def test_p99_of_a_hundred_is_the_99th_value_and_of_a_thousand_the_990th() -> None:
    assert nearest_rank(range(1, 101), 0.99) == 99
    assert nearest_rank(range(1, 1001), 0.99) == 990


def test_nearest_rank_of_nothing_is_zero() -> None:
    assert nearest_rank([], 0.5) == 0.0
