"""Space: encode/decode round trips (property tests), linear constraints, pools."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.config import ParameterConfig, PoolConfig, SpaceConfig
from controller.errors import UserError
from controller.space import Parameter, Space, SpaceError, parse_linear_constraint


def _space() -> Space:
    return Space([
        Parameter("x", "real", 0.0, 10.0),
        Parameter("lr", "real", 1e-4, 1e-1, log=True),
        Parameter("layers", "integer", 3, 8),
        Parameter("material", "choice", values=("silicon", "diamond", "gaas")),
    ], ["x + 2*layers <= 20"])


@settings(max_examples=200, deadline=None)
@given(x=st.floats(0, 10), lr=st.floats(1e-4, 1e-1), layers=st.integers(3, 8),
       material=st.sampled_from(["silicon", "diamond", "gaas"]))
def test_encode_then_decode_returns_the_setting(x, lr, layers, material):
    space = _space()
    params = {"x": x, "lr": lr, "layers": layers, "material": material}
    u = space.encode(params)
    assert np.all((0 <= u) & (u <= 1))
    back = space.decode(u)
    assert back["layers"] == layers and back["material"] == material
    assert math.isclose(back["x"], x, abs_tol=1e-9)
    assert math.isclose(back["lr"], lr, rel_tol=1e-9)


@settings(max_examples=200, deadline=None)
@given(u=st.lists(st.floats(0, 1), min_size=4, max_size=4))
def test_decode_then_encode_lands_on_the_snapped_point(u):
    space = _space()
    enc = space.encoded()
    snapped = enc.snap(np.array(u))
    again = space.encode(space.decode(snapped))
    assert np.allclose(again, snapped, atol=1e-9)


def test_values_outside_the_space_are_rejected():
    with pytest.raises(SpaceError, match="outside"):
        _space().encode({"x": 11, "lr": 0.01, "layers": 3, "material": "silicon"})
    with pytest.raises(SpaceError, match="not one of"):
        _space().encode({"x": 1, "lr": 0.01, "layers": 3, "material": "wood"})


@settings(max_examples=100, deadline=None)
@given(x=st.floats(0, 10), layers=st.integers(3, 8))
def test_linear_constraint_in_the_unit_cube_agrees_with_the_raw_one(x, layers):
    space = _space()
    params = {"x": x, "lr": 0.01, "layers": layers, "material": "silicon"}
    enc = space.encoded()
    assert bool(enc.feasible(space.encode(params)[None])[0]) == space.satisfies(params)


def test_constraint_parser_handles_coefficients_and_both_sides():
    params = {n: Parameter(n, "real") for n in ("a", "b", "c")}
    assert parse_linear_constraint("a + 2*b <= 10", params) == ({"a": 1.0, "b": 2.0}, "<=", 10.0)
    coeffs, op, rhs = parse_linear_constraint("b - a >= 0.5 + c/2", params)
    assert coeffs == {"b": 1.0, "a": -1.0, "c": -0.5} and op == ">=" and rhs == 0.5
    for bad in ["a * b <= 1", "a <= b <= c", "a < 1", "a + 1", "3 <= 4", "d <= 1"]:
        with pytest.raises(SpaceError):
            parse_linear_constraint(bad, params)


def test_grid_pool_has_every_point(tmp_path: Path):
    cfg = SpaceConfig(pool=PoolConfig(grid={"x": [0, 9, 10], "y": [0, 4, 5]}))
    space = Space.from_config(cfg, tmp_path)
    enc = space.encoded()
    assert enc.pool.shape == (50, 2) and enc.pool.min() == 0 and enc.pool.max() == 1
    assert space.pool_params(49) == {"x": 9.0, "y": 4.0}


def test_file_pool_reads_csv_and_keeps_labels(tmp_path: Path):
    (tmp_path / "targets.csv").write_text("name,ra,dec\na,10,-5\nb,20,5\nc,30,0\n")
    space = Space.from_config(SpaceConfig(pool=PoolConfig(file="targets.csv")), tmp_path)
    assert space.names == ["ra", "dec"]
    assert space.pool_params(1) == {"ra": 20.0, "dec": 5.0, "name": "b"}


def test_missing_pool_file_names_the_field(tmp_path: Path):
    with pytest.raises(UserError, match="space.pool.file"):
        Space.from_config(SpaceConfig(pool=PoolConfig(file="nope.csv")), tmp_path)


def test_integer_and_choice_levels():
    enc = Space.from_config(SpaceConfig(parameters=[
        ParameterConfig(name="n", type="integer", low=1, high=4),
        ParameterConfig(name="m", type="choice", values=["a", "b"]),
    ]), Path(".")).encoded()
    assert enc.levels == [4, 2] and enc.categorical == [False, True]
    assert np.allclose(enc.snap(np.array([0.4, 0.6])), [1 / 3, 1.0])
