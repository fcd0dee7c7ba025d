"""Specification of the tracking-detector simulator: physics scaling, Monte Carlo against analytic, batching, errors."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators import create
from simulators.base import SimulatorError
from simulators.detector import DetectorSimulator, fit_variances, highland_angle

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "detector_design.yaml"
QUIET = {"support_material": 0.0, "beampipe": None}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors on a shared 2-core machine run fastest on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def design(radii=(40.0, 100.0, 200.0, 400.0, 700.0), thickness=100.0, pitch=25.0, field=2.0, scale=1.0) -> dict[str, torch.Tensor]:
    """One design as a batch of one, radii optionally scaled."""
    params = {"layers": float(len(radii)), "thickness": thickness, "pitch": pitch, "field": field}
    params.update({f"r{j + 1}": r * scale for j, r in enumerate(radii)})
    return {k: torch.tensor([float(v)], dtype=torch.float64) for k, v in params.items()}


def batch(*designs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = sorted({k for d in designs for k in d})
    return {n: torch.cat([d.get(n, torch.zeros(1, dtype=torch.float64)) for d in designs]) for n in names}


def metric(sim: DetectorSimulator, params: dict[str, torch.Tensor], name: str) -> float:
    return float(sim.evaluate(params).metrics[name][0])


# the campaign-facing description ------------------------------------------------------------------


def test_parameters_are_in_campaign_shape_with_linear_ordering_constraints():
    sim = DetectorSimulator(max_layers=6)
    specs = {p["name"]: p for p in sim.parameters()}
    assert list(specs) == ["layers", "r1", "r2", "r3", "r4", "r5", "r6", "thickness", "pitch", "field"]
    assert specs["layers"]["type"] == "integer" and (specs["layers"]["low"], specs["layers"]["high"]) == (3, 6)
    assert specs["pitch"]["log"] and specs["thickness"]["log"] and not specs.get("field", {}).get("log")
    assert all(specs[f"r{j}"]["low"] >= 30.0 and specs[f"r{j}"]["high"] <= 800.0 for j in range(1, 7))
    assert sim.constraints() == [f"r{j + 1} - r{j} >= 20" for j in range(1, 6)]
    space = pytest.importorskip("controller.space")
    for text in sim.constraints():
        coeffs, op, rhs = space.parse_linear_constraint(text, specs)
        assert op == ">=" and rhs == 20.0 and sorted(coeffs.values()) == [-1.0, 1.0]


def test_suggested_objectives_and_outcome_constraints_name_reported_metrics():
    sim = DetectorSimulator()
    names = set(sim.metrics())
    assert {o["metric"] for o in sim.objectives()} == {"pt_resolution_10GeV", "d0_resolution", "cost"}
    assert {o["metric"] for o in sim.objectives()} <= names
    assert sim.outcome_constraints() == [{"metric": "material_budget", "op": "<=", "bound": 5.0}]
    assert set(sim.evaluate(design()).metrics) == names
    assert "pt_resolution_0p5GeV" in DetectorSimulator(momenta=[0.5, 2.0], bounds={"field": [0.5, 2.0]}).metrics()


def test_registry_builds_the_detector_with_options():
    sim = create("detector", fidelity="montecarlo", tracks=500, seed=3)
    assert isinstance(sim, DetectorSimulator) and sim.fidelity == "montecarlo" and sim.tracks == 500


# physics: closed forms -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_measurement_term_equals_gluckstern_for_equally_spaced_layers(n):
    length, sigma = 0.5, 10e-6
    radii = torch.linspace(0.05, 0.05 + length, n, dtype=torch.float64).unsqueeze(0)
    hit_error = torch.tensor([sigma], dtype=torch.float64)
    var_meas, _ = fit_variances(radii, torch.ones_like(radii), hit_error, radii, torch.zeros_like(radii))
    sigma_k = 2.0 * var_meas[0, 1].sqrt()
    gluckstern = sigma / length**2 * math.sqrt(720.0 * (n - 1) ** 3 / ((n - 2) * n * (n + 1) * (n + 2)))
    assert float(sigma_k) == pytest.approx(gluckstern, rel=1e-9)


def test_highland_angle_matches_the_pdg_formula():
    theta = highland_angle(*(torch.tensor(v, dtype=torch.float64) for v in (0.01, 1.0, 1.0)))
    assert float(theta) == pytest.approx(0.0136 * 0.1 * (1 + 0.038 * math.log(0.01)), rel=1e-12)


def test_material_budget_and_cost_follow_the_geometry():
    sim = DetectorSimulator(support_material=0.3, eta_max=1.0, cost_per_cm2=10.0, cost_per_channel=1e-4)
    out = sim.evaluate(design(radii=(100.0, 200.0, 300.0), thickness=93.7, pitch=50.0)).metrics
    assert float(out["material_budget"][0]) == pytest.approx(3 * (0.1 + 0.3))
    area = sum(2 * math.pi * r * 2 * r * math.sinh(1.0) for r in (10.0, 20.0, 30.0))
    assert float(out["cost"][0]) == pytest.approx((area * 10.0 + area / 0.005**2 * 1e-4) / 1e6)
    finer = sim.evaluate(design(radii=(100.0, 200.0, 300.0), thickness=93.7, pitch=25.0)).metrics
    assert float(finer["cost"][0]) > float(out["cost"][0])


# physics: scaling laws (analytic) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def measurement_limited() -> DetectorSimulator:
    """High momentum, thin sensors and no support or beam pipe: the hit resolution dominates."""
    return DetectorSimulator(momenta=[100.0], d0_momentum=100.0, **QUIET)


@pytest.fixture(scope="module")
def scattering_limited() -> DetectorSimulator:
    """Low momentum and heavy layers: multiple scattering dominates."""
    return DetectorSimulator(momenta=[2.0, 20.0], d0_momentum=2.0, support_material=1.0, beampipe=None)


def test_measurement_limited_pt_resolution_scales_as_pitch_over_b_l_squared(measurement_limited):
    sim, m = measurement_limited, "pt_resolution_100GeV"
    base = metric(sim, design(thickness=1.0, pitch=20.0, field=2.0), m)
    assert metric(sim, design(thickness=1.0, pitch=40.0, field=2.0), m) / base == pytest.approx(2.0, rel=2e-3)
    assert metric(sim, design(thickness=1.0, pitch=20.0, field=4.0), m) / base == pytest.approx(0.5, rel=2e-3)
    small = metric(sim, design(radii=(30, 60, 90, 120, 150), thickness=1.0, pitch=20.0), m)
    large = metric(sim, design(radii=(30, 60, 90, 120, 150), thickness=1.0, pitch=20.0, scale=4.0), m)
    assert small / large == pytest.approx(16.0, rel=1e-2)


def test_measurement_limited_d0_resolution_scales_with_pitch_and_not_with_field(measurement_limited):
    sim, m = measurement_limited, "d0_resolution"
    base = metric(sim, design(thickness=1.0, pitch=20.0, field=2.0), m)
    assert metric(sim, design(thickness=1.0, pitch=40.0, field=2.0), m) / base == pytest.approx(2.0, rel=2e-3)
    assert metric(sim, design(thickness=1.0, pitch=20.0, field=4.0), m) / base == pytest.approx(1.0, rel=2e-3)


def test_scattering_limited_pt_resolution_scales_as_one_over_b_l_and_is_flat_in_p(scattering_limited):
    sim = scattering_limited
    radii = (30.0, 60.0, 90.0, 120.0, 150.0)
    base = sim.evaluate(design(radii, thickness=300.0, pitch=1.0, field=1.0)).metrics
    assert float(base["pt_resolution_20GeV"][0]) / float(base["pt_resolution_2GeV"][0]) == pytest.approx(1.0, rel=1e-2)
    stronger = metric(sim, design(radii, thickness=300.0, pitch=1.0, field=2.0), "pt_resolution_2GeV")
    assert stronger / float(base["pt_resolution_2GeV"][0]) == pytest.approx(0.5, rel=5e-3)
    longer = metric(sim, design(radii, thickness=300.0, pitch=1.0, field=1.0, scale=4.0), "pt_resolution_2GeV")
    assert longer / float(base["pt_resolution_2GeV"][0]) == pytest.approx(0.25, rel=1e-2)


def test_scattering_limited_d0_resolution_falls_as_one_over_p(scattering_limited):
    out = scattering_limited.evaluate(design((30.0, 60.0, 90.0, 120.0, 150.0), thickness=300.0, pitch=0.1, field=1.0)).metrics
    assert float(out["d0_resolution_2GeV"][0]) / float(out["d0_resolution_20GeV"][0]) == pytest.approx(10.0, rel=1e-2)


# Monte Carlo against analytic ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_monte_carlo_agrees_with_analytic_where_hits_dominate(dtype):
    options = dict(momenta=[50.0], d0_momentum=50.0, **QUIET)
    params = batch(design(thickness=50.0, pitch=20.0), design(radii=(40.0, 300.0, 700.0), thickness=50.0, pitch=50.0, field=1.0))
    analytic = DetectorSimulator(**options).evaluate(params)
    mc = DetectorSimulator(fidelity="montecarlo", tracks=20_000, dtype=dtype, seed=5, **options).evaluate(params)
    for name in ("pt_resolution_50GeV", "d0_resolution"):
        pull = (mc.metrics[name] - analytic.metrics[name]) / mc.sem[name]
        assert pull.abs().max() < 4.0, (name, pull)
        assert torch.allclose(mc.sem[name], mc.metrics[name] / math.sqrt(2 * 20_000), rtol=0.1)


def test_monte_carlo_agrees_with_analytic_where_scattering_dominates():
    options = dict(momenta=[1.0, 5.0], d0_momentum=1.0)
    params = design(radii=(30.0, 70.0, 120.0, 200.0, 300.0), thickness=200.0, pitch=10.0, field=1.0)
    analytic = DetectorSimulator(**options).evaluate(params).metrics
    mc = DetectorSimulator(fidelity="montecarlo", tracks=20_000, seed=2, **options).evaluate(params)
    for name in ("pt_resolution_1GeV", "pt_resolution_5GeV", "d0_resolution"):
        expected, sem = float(analytic[name][0]), float(mc.sem[name][0])
        assert float(mc.metrics[name][0]) == pytest.approx(expected, abs=3 * sem + 0.01 * expected), name


def test_simulate_tracks_returns_fitted_parameters_spread_as_the_resolution_says():
    sim = DetectorSimulator(fidelity="montecarlo", seed=1, momenta=[10.0], batch_elements=4096)
    params = {k: float(v[0]) for k, v in design().items()}
    tracks = sim.simulate_tracks(params, 30_000, momentum=10.0)
    assert set(tracks) == {"pt", "curvature", "d0", "phi0"} and all(v.shape == (30_000,) for v in tracks.values())
    k_true = 0.299792458 * 2.0 / 10.0
    spread = float((tracks["curvature"] / k_true - 1).std()) * 100
    expected = metric(DetectorSimulator(momenta=[10.0]), design(), "pt_resolution_10GeV")
    assert spread == pytest.approx(expected, rel=0.03)
    assert float(tracks["pt"].median()) == pytest.approx(10.0, rel=1e-3)
    assert abs(float(tracks["d0"].mean())) < 5 * float(tracks["d0"].std()) / math.sqrt(30_000)


# batching and seeding ------------------------------------------------------------------------------


MIXED = [
    design(),
    design(radii=(40.0, 200.0, 600.0), pitch=50.0, field=1.0),
    design(radii=(50.0, 80.0, 150.0, 300.0), thickness=250.0),
]


@pytest.mark.parametrize("fidelity", ["analytic", "montecarlo"])
def test_batched_evaluation_equals_one_design_at_a_time(fidelity):
    options = dict(fidelity=fidelity, tracks=2000, seed=9)
    together = DetectorSimulator(**options).evaluate(batch(*MIXED))
    for i, one in enumerate(MIXED):
        alone = DetectorSimulator(**options).evaluate(one)
        for name, value in alone.metrics.items():
            assert float(together.metrics[name][i]) == pytest.approx(float(value[0]), rel=1e-5), name
        for name, value in alone.sem.items():
            assert float(together.sem[name][i]) == pytest.approx(float(value[0]), rel=1e-4), name
    assert [m["layers"] for m in together.metadata] == [5, 3, 4]


def test_a_parameter_given_once_applies_to_every_design_in_the_batch():
    params = design()
    params["pitch"] = torch.tensor([10.0, 20.0, 40.0], dtype=torch.float64)
    out = DetectorSimulator(momenta=[100.0], **QUIET).evaluate(params).metrics["pt_resolution_100GeV"]
    assert out.shape == (3,) and bool((out[1:] > out[:-1]).all())


def test_same_seed_repeats_results_and_each_call_draws_fresh_noise():
    params = batch(*MIXED)
    first, second = (DetectorSimulator(fidelity="montecarlo", tracks=1000, seed=4) for _ in range(2))
    a, b = first.evaluate(params), second.evaluate(params)
    assert all(torch.equal(a.metrics[n], b.metrics[n]) for n in a.metrics)
    again = first.evaluate(params)
    assert not torch.equal(again.metrics["pt_resolution_10GeV"], a.metrics["pt_resolution_10GeV"])
    other = DetectorSimulator(fidelity="montecarlo", tracks=1000, seed=5).evaluate(params)
    assert not torch.equal(other.metrics["pt_resolution_10GeV"], a.metrics["pt_resolution_10GeV"])
    first.reset(4)
    assert torch.equal(first.evaluate(params).metrics["d0_resolution"], a.metrics["d0_resolution"])


def test_analytic_fidelity_reports_no_noise_and_monte_carlo_reports_sem_for_resolutions():
    assert DetectorSimulator().evaluate(design()).sem == {}
    sem = DetectorSimulator(fidelity="montecarlo", tracks=500).evaluate(design()).sem
    assert set(sem) == {n for n in DetectorSimulator().metrics() if "resolution" in n}
    assert all(float(v[0]) > 0 for v in sem.values())


@settings(max_examples=25, deadline=None)
@given(
    gaps=st.lists(st.floats(20.0, 95.0), min_size=3, max_size=8),
    first=st.floats(30.0, 100.0),
    pitch=st.floats(10.0, 100.0),
    thickness=st.floats(50.0, 300.0),
    field=st.floats(0.5, 4.0),
)
def test_any_valid_design_gets_finite_positive_metrics_alone_or_in_a_batch(gaps, first, pitch, thickness, field):
    radii = [first + sum(gaps[:j]) for j in range(len(gaps))]
    sim = DetectorSimulator()
    one = design(tuple(radii), thickness=thickness, pitch=pitch, field=field)
    alone = sim.evaluate(one).metrics
    together = sim.evaluate(batch(design(), one)).metrics
    for name, value in alone.items():
        assert math.isfinite(float(value[0])) and float(value[0]) > 0, name
        assert float(together[name][1]) == pytest.approx(float(value[0]), rel=1e-9)


# errors a scientist can act on ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, words",
    [
        ({"fidelity": "fast"}, ["fidelity", "analytic", "montecarlo"]),
        ({"trackz": 100}, ["trackz", "did you mean 'tracks'"]),
        ({"tracks": 0}, ["tracks", ">= 10"]),
        ({"momenta": []}, ["momenta"]),
        ({"momenta": [1.0, -2.0]}, ["momenta", "> 0"]),
        ({"momenta": [0.1]}, ["momenta", "curls up"]),
        ({"envelope": [800.0, 30.0]}, ["envelope", "inner < outer"]),
        ({"envelope": [30.0]}, ["envelope", "2 numbers"]),
        ({"min_gap": -1.0}, ["min_gap", ">= 0"]),
        ({"min_gap": 200.0}, ["min_gap", "do not fit"]),
        ({"min_layers": 2}, ["min_layers", ">= 3"]),
        ({"max_layers": 2}, ["max_layers", ">= 3"]),
        ({"bounds": {"pitch": [50.0, 10.0]}}, ["bounds.pitch", "low < high"]),
        ({"bounds": {"colour": [1.0, 2.0]}}, ["bounds", "colour"]),
        ({"beampipe": [40.0, 0.1]}, ["beampipe", "inside the envelope"]),
        ({"cost_per_cm2": -1.0}, ["cost_per_cm2", ">= 0"]),
        ({"cost_per_channel": "cheap"}, ["cost_per_channel"]),
        ({"max_material": 0.0}, ["max_material", "> 0"]),
        ({"seed": 1.5}, ["seed", "integer"]),
        ({"device": "tpu"}, ["device"]),
        ({"dtype": "float16"}, ["dtype", "float32"]),
    ],
)
def test_bad_options_raise_simulator_errors_that_name_the_option(options, words):
    with pytest.raises(SimulatorError) as info:
        DetectorSimulator(**options)
    assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"layers": 9.0}, ["layers", "[3, 8]"]),
        ({"layers": 2.0}, ["layers", "[3, 8]"]),
        ({"layers": 4.5}, ["layers", "whole number"]),
        ({"r1": 10.0}, ["r1", "outside the envelope"]),
        ({"r5": 900.0}, ["r5", "outside the envelope"]),
        ({"r3": 90.0}, ["r3 - r2", "ordered", "min_gap"]),
        ({"r3": 110.0}, ["r3 - r2", "min_gap = 20"]),
        ({"thickness": -5.0}, ["thickness", "> 0"]),
        ({"pitch": 0.0}, ["pitch", "> 0"]),
        ({"field": 0.0}, ["field", "> 0"]),
        ({"field": 40.0}, ["curls up"]),
        ({"r9": 750.0}, ["unknown parameters", "r9"]),
        ({"pitch": float("nan")}, ["pitch", "finite"]),
        ({"field": [1.0, 2.0, 3.0], "pitch": [20.0, 30.0]}, ["pitch", "2 values", "3 designs"]),
    ],
)
def test_invalid_designs_raise_simulator_errors_that_say_what_is_wrong(change, words):
    params = design()
    params.update({k: torch.tensor(v if isinstance(v, list) else [v], dtype=torch.float64) for k, v in change.items()})
    with pytest.raises(SimulatorError) as info:
        DetectorSimulator().evaluate(params)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_missing_radii_for_the_used_layers_are_named():
    params = design()
    del params["r5"]
    with pytest.raises(SimulatorError, match=r"missing parameters \['r5'\]"):
        DetectorSimulator().evaluate(params)
    del params["r4"]
    params["layers"] = torch.tensor([3.0], dtype=torch.float64)
    assert DetectorSimulator().evaluate(params).metadata[0]["layers"] == 3


# the example campaign file -------------------------------------------------------------------------


def test_every_point_of_the_example_campaign_space_is_accepted_by_the_simulator():
    cfg = yaml.safe_load(EXAMPLE.read_text())
    instrument = cfg["instrument"]
    assert instrument["kind"] == "simulator" and instrument["name"] == "detector"
    sim = create("detector", **{**instrument["options"], "tracks": 200})
    specs = cfg["space"]["parameters"]
    u = torch.rand(4000, len(specs), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    params = {}
    for column, p in zip(u.T, specs):
        low, high = (math.log(p["low"]), math.log(p["high"])) if p.get("log") else (p["low"], p["high"])
        value = low + column * (high - low)
        value = value.exp() if p.get("log") else value
        params[p["name"]] = value.round() if p["type"] == "integer" else value
    radii = sorted((n for n in params if n.startswith("r")), key=lambda n: int(n[1:]))
    assert cfg["space"]["constraints"] == [f"{b} - {a} >= 20" for a, b in zip(radii, radii[1:])]
    feasible = torch.stack([params[b] - params[a] >= 20 for a, b in zip(radii, radii[1:])]).all(0)
    assert feasible.sum() > 50
    result = sim.evaluate({n: v[feasible] for n, v in params.items()})
    wanted = {o["metric"] for o in cfg["objectives"]} | {c["metric"] for c in cfg["constraints"]}
    assert wanted <= set(result.metrics)
    assert all(torch.isfinite(result.metrics[m]).all() for m in wanted)
    preflight = pytest.importorskip("controller.preflight")
    assert preflight.load_config(EXAMPLE).instrument.name == "detector"


# optional paths ------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_analytic_and_monte_carlo_agrees_on_cuda():
    params = batch(*MIXED)
    cpu = DetectorSimulator().evaluate(params).metrics
    gpu = DetectorSimulator(device="cuda").evaluate({k: v.cuda() for k, v in params.items()}).metrics
    for name, value in cpu.items():
        assert torch.allclose(gpu[name].cpu(), value, rtol=1e-9), name
    mc = DetectorSimulator(device="cuda", fidelity="montecarlo", tracks=50_000, momenta=[50.0], d0_momentum=50.0, **QUIET)
    out = mc.evaluate({k: v.cuda() for k, v in params.items()})
    analytic = DetectorSimulator(momenta=[50.0], d0_momentum=50.0, **QUIET).evaluate(params).metrics
    pull = (out.metrics["pt_resolution_50GeV"].cpu() - analytic["pt_resolution_50GeV"]) / out.sem["pt_resolution_50GeV"].cpu()
    assert pull.abs().max() < 3.0


@pytest.mark.slow
def test_compiled_monte_carlo_matches_eager():
    params = {k: float(v[0]) for k, v in design().items()}
    eager = DetectorSimulator(fidelity="montecarlo", seed=0).simulate_tracks(params, 8192)
    fused = DetectorSimulator(fidelity="montecarlo", seed=0, compile=True).simulate_tracks(params, 8192)
    for name in eager:
        assert torch.allclose(eager[name], fused[name], rtol=1e-4, atol=1e-3 * float(eager[name].std())), name
