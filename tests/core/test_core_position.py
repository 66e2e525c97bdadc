"""Position: the reader's delivered time_us moves only by compare-and-set (docs/architecture.md §4.1)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstream._py import position as py_position
from jetstream.implementation import PositionConflict

try:
    from jetstream._core import position as cy_position
except ImportError:  # pragma: no cover - only when the extension is not built
    cy_position = None

IMPLS = [pytest.param(py_position.Position, id="py"), pytest.param(getattr(cy_position, "Position", None), id="cython")]


@pytest.fixture(scope="module", params=IMPLS)
def Position(request):
    if request.param is None:
        pytest.skip("Cython core not built")
    return request.param


def test_position_starts_at_given_time_us(Position):
    assert Position(1_700_000_000_000_000).value == 1_700_000_000_000_000


def test_advance_from_current_value_moves_forward(Position):
    position = Position(10)
    position.advance(10, 25)
    assert position.value == 25


def test_advance_to_same_value_is_allowed(Position):
    position = Position(10)
    position.advance(10, 10)
    assert position.value == 10


def test_advance_with_stale_expected_raises_conflict_and_keeps_value(Position):
    position = Position(10)
    position.advance(10, 20)
    with pytest.raises(PositionConflict):
        position.advance(10, 30)  # a second writer that started from 10
    assert position.value == 20


def test_advance_backwards_raises_conflict_and_keeps_value(Position):
    position = Position(10)
    with pytest.raises(PositionConflict):
        position.advance(10, 9)
    assert position.value == 10


def test_value_is_read_only(Position):
    position = Position(10)
    with pytest.raises(AttributeError):
        position.value = 11


def test_both_twins_raise_the_same_exception_class():
    assert issubclass(PositionConflict, RuntimeError)
    assert py_position.PositionConflict is PositionConflict
    if cy_position is not None:
        assert cy_position.PositionConflict is PositionConflict


@given(st.lists(st.tuples(st.integers(-5, 5), st.integers(-5, 10)), max_size=30))
def test_twins_agree_on_random_advance_sequences(steps):
    if cy_position is None:
        pytest.skip("Cython core not built")
    twins = [py_position.Position(0), cy_position.Position(0)]
    for expected_offset, delta in steps:
        outcomes = []
        for position in twins:
            expected = position.value + expected_offset
            try:
                position.advance(expected, expected + delta)
                outcomes.append(("ok", position.value))
            except PositionConflict:
                outcomes.append(("conflict", position.value))
        assert outcomes[0] == outcomes[1]
        # the model: only an exact expected and a non-negative delta succeed
        model_ok = expected_offset == 0 and delta >= 0
        assert (outcomes[0][0] == "ok") == model_ok
