"""The microscope simulator: counting statistics, probe, drift, damage, ground truth and options."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import io

import simulators
from simulators.base import SimulatorError
from simulators.microscope import MicroscopeSimulator
from simulators.microscope.counting import poisson_from_uniform, counter_uniform

SMALL = {"size": 64, "channels": 128}


def still(**options) -> MicroscopeSimulator:
    """A small microscope without drift or damage, so repeated points see the same expectation."""
    return MicroscopeSimulator(**{**SMALL, "drift_std": 0.0, **options})


def at(x, y, **extra) -> dict[str, torch.Tensor]:
    out = {"x": torch.as_tensor(x, dtype=torch.float64), "y": torch.as_tensor(y, dtype=torch.float64)}
    out.update({k: torch.as_tensor(v, dtype=torch.float64) for k, v in extra.items()})
    return out


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small tensors: one intra-op thread avoids OpenMP stalls on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ihc() -> MicroscopeSimulator:
    return simulators.create("microscope", seed=1)


def test_registry_builds_a_microscope_with_campaign_shaped_parameters(ihc):
    assert isinstance(ihc, MicroscopeSimulator)
    assert ihc.parameters() == [
        {"name": "x", "type": "real", "low": 0.0, "high": 127.0},
        {"name": "y", "type": "real", "low": 0.0, "high": 127.0},
    ]
    assert ihc.data_shape() == (256,)
    assert ihc.objectives() == [{"metric": "peak_ratio", "goal": "maximize"}]
    grid = ihc.candidates()
    assert len(grid["x"]) == len(grid["y"]) == 32 * 32
    with_dwell = MicroscopeSimulator(**SMALL, dwell_range=[0.01, 1.0])
    assert with_dwell.parameters()[-1] == {"name": "dwell", "type": "real", "low": 0.01, "high": 1.0, "log": True}


def test_measurement_returns_metrics_sem_and_float32_spectra(ihc):
    result = ihc.evaluate(at([10.0, 64.5, 127.0], [0.0, 30.2, 127.0]))
    assert set(result.metrics) == {"peak_ratio", "roi_score", "total_counts"}
    assert all(v.shape == (3,) for v in result.metrics.values())
    assert result.data.shape == (3, 256) and result.data.dtype == torch.float32
    assert torch.all(result.data >= 0) and torch.equal(result.data, result.data.round())
    assert torch.all(result.sem["peak_ratio"] > 0)
    assert {"x_landed", "y_landed", "start_s", "dwell_s", "travel_s"} <= set(result.metadata[0])


def test_poisson_sampler_matches_the_poisson_distribution():
    rows = torch.arange(400)
    for mean in (0.7, 4.0, 11.0, 25.0, 400.0):
        u = counter_uniform(5, rows, 100)
        counts = poisson_from_uniform(torch.full((400, 100), mean, dtype=torch.float64), u).numpy().ravel()
        ks = np.arange(int(mean + 8 * math.sqrt(mean) + 10))
        pmf = np.exp(ks * math.log(mean) - mean - np.array([math.lgamma(k + 1) for k in ks]))
        expected = pmf * counts.size
        observed = np.bincount(counts.astype(int), minlength=ks.size)[: ks.size]
        ok = expected > 5
        chi2, dof = ((observed[ok] - expected[ok]) ** 2 / expected[ok]).sum(), ok.sum() - 1
        assert chi2 < dof + 5 * math.sqrt(2 * dof), (mean, chi2, dof)
        assert counts.mean() == pytest.approx(mean, rel=0.02) and counts.var() == pytest.approx(mean, rel=0.05)


def test_repeated_spectra_have_variance_equal_to_mean():
    sim = still()
    counts = sim.evaluate(at([30.0] * 600, [20.0] * 600)).data.double()
    mean, var = counts.mean(0), counts.var(0)
    bright = mean > 5
    assert bright.sum() > 20
    assert 0.9 < float((var[bright] / mean[bright]).median()) < 1.1


def test_signal_to_noise_grows_as_sqrt_dwell():
    sim = still()
    snr = []
    for dwell in (0.01, 0.16):
        total = sim.evaluate(at([30.0] * 300, [20.0] * 300, dwell=[dwell] * 300)).metrics["total_counts"]
        snr.append(float(total.mean() / total.std()))
    assert snr[1] / snr[0] == pytest.approx(4.0, rel=0.15)


def test_probe_blur_reduces_contrast_at_an_edge(tmp_path):
    edge = np.zeros((64, 64), np.uint8)
    edge[:, 32:] = 255
    path = tmp_path / "edge.png"
    io.imsave(path, edge, check_contrast=False)
    xs, ys = [30.0, 34.0], [32.0, 32.0]
    contrast = {}
    for sigma in (0.0, 3.0):
        sim = still(image=str(path), n_endmembers=2, probe_sigma=sigma, flux=1e7)
        score = sim.evaluate(at(xs, ys)).metrics["roi_score"]
        contrast[sigma] = abs(float(score[1] - score[0]))
    assert contrast[0.0] > 0.9
    assert contrast[3.0] < 0.6 * contrast[0.0]


def test_drift_moves_the_sampled_position_over_time():
    sim = MicroscopeSimulator(**SMALL, drift_std=0.3, seed=4)
    result = sim.evaluate(at([32.0] * 40, [32.0] * 40, dwell=[5.0] * 40))
    landed = np.array([[m["x_landed"], m["y_landed"]] for m in result.metadata])
    mid_dwell = torch.tensor([m["start_s"] + 2.5 for m in result.metadata])
    np.testing.assert_allclose(landed - 32.0, sim.drift_at(mid_dwell).numpy(), atol=1e-6)
    assert np.linalg.norm(landed[-1] - landed[0]) > 0.5
    assert np.all(np.diff([m["start_s"] for m in result.metadata]) > 0)
    again = MicroscopeSimulator(**SMALL, drift_std=0.3, seed=4)
    assert again.evaluate(at([32.0] * 40, [32.0] * 40, dwell=[5.0] * 40)).metadata == result.metadata
    steady = still().evaluate(at([32.0] * 5, [32.0] * 5, dwell=[5.0] * 5)).metadata
    assert all(m["x_landed"] == 32.0 and m["y_landed"] == 32.0 for m in steady)


def test_beam_damage_lowers_repeated_signal():
    totals = {}
    for rate in (0.0, 5.0):
        sim = still(beam_damage=rate, dwell=0.2)
        totals[rate] = sim.evaluate(at([20.0] * 40, [20.0] * 40)).metrics["total_counts"]
        assert sim.dose_map().max() > 0
    undamaged, damaged = totals[0.0], totals[5.0]
    assert float(damaged[-5:].mean()) < 0.8 * float(damaged[:5].mean())
    assert float(undamaged[-5:].mean()) == pytest.approx(float(undamaged[:5].mean()), rel=0.1)


def test_batched_equals_sequential_for_the_same_seed_and_state():
    options = {**SMALL, "seed": 9, "drift_std": 0.5, "beam_damage": 2.0}
    batched, single = MicroscopeSimulator(**options), MicroscopeSimulator(**options)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 63, 30), rng.uniform(0, 63, 30)
    x[10:15], y[10:15] = x[9], y[9]
    together = batched.evaluate(at(x, y))
    apart = [single.evaluate(at(x[i : i + 1], y[i : i + 1])) for i in range(30)]
    assert torch.equal(together.data, torch.cat([r.data for r in apart]))
    for name, values in together.metrics.items():
        assert torch.allclose(values, torch.cat([r.metrics[name] for r in apart]), rtol=1e-9, atol=1e-12), name
    assert together.metadata == [r.metadata[0] for r in apart]
    assert batched.clock == single.clock and batched.stage_position == single.stage_position


def test_reset_replays_the_same_measurements():
    sim = MicroscopeSimulator(**SMALL, seed=2)
    first = sim.evaluate(at([5.0, 40.0], [7.0, 50.0])).data
    sim.reset(2)
    assert torch.equal(sim.evaluate(at([5.0, 40.0], [7.0, 50.0])).data, first)
    sim.reset(3)
    assert not torch.equal(sim.evaluate(at([5.0, 40.0], [7.0, 50.0])).data, first)


def test_move_cost_is_travel_plus_settle_and_advances_the_clock():
    sim = still(stage_speed=10.0, settle_time=0.5, pixel_size=2.0, dwell=0.1)
    assert sim.move_cost({"x": 0, "y": 0}, {"x": 3, "y": 4}) == pytest.approx(5 * 2.0 / 10.0 + 0.5)
    assert sim.move_cost({"x": 3, "y": 4}, {"x": 3, "y": 4}) == 0.0
    sim.evaluate(at([3.0, 3.0], [4.0, 4.0]))
    assert sim.clock == pytest.approx(1.5 + 0.1 + 0.1)


def test_roi_mask_is_a_nontrivial_part_of_the_sample(ihc):
    truth = ihc.ground_truth()
    assert 0.01 < truth["roi_mask"].mean() < 0.5
    assert truth["roi_count"] >= 1
    assert truth["abundances"].sum(0) == pytest.approx(np.ones((128, 128)))
    inside = truth["peak_ratio"][truth["roi_mask"]].mean()
    outside = truth["peak_ratio"][~truth["roi_mask"]].mean()
    assert inside > 3 * outside
    assert ihc.optimal_value == pytest.approx(truth["peak_ratio"].max())


def test_measured_peak_ratio_is_higher_inside_regions_of_interest(ihc):
    truth = ihc.ground_truth()
    grid = ihc.candidates()
    ratio = ihc.evaluate(at(grid["x"], grid["y"])).metrics["peak_ratio"].numpy()
    inside = truth["roi_mask"][grid["y"].astype(int), grid["x"].astype(int)]
    assert ratio[inside].mean() > 2 * ratio[~inside].mean()


def test_full_raster_scores_recall_one_and_truth_scores_zero_error(ihc):
    ys, xs = np.mgrid[0:128, 0:128]
    raster = {"x": xs.ravel(), "y": ys.ravel()}
    assert ihc.roi_recall(raster) == 1.0
    assert ihc.coverage(raster) == 1.0
    assert ihc.roi_recall(np.empty((0, 2))) == 0.0
    sparse = ihc.roi_recall([{"x": 0.0, "y": 0.0}])
    assert 0.0 <= sparse < 1.0
    truth = ihc.ground_truth()["peak_ratio"]
    assert ihc.reconstruction_error(truth) == 0.0
    assert ihc.reconstruction_error(np.full_like(truth, truth.mean())) == pytest.approx(1.0)
    with pytest.raises(SimulatorError, match="shape"):
        ihc.reconstruction_error(np.zeros((4, 4)))


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"dwell": -0.1}, "dwell"),
        ({"image": "no-such-sample"}, "image"),
        ({"size": 3}, "size"),
        ({"channels": 8}, "channels"),
        ({"n_endmembers": 12}, "n_endmembers"),
        ({"probe_sigma": -1.0}, "probe_sigma"),
        ({"beam_damage": "lots"}, "beam_damage"),
        ({"device": "tpu"}, "device"),
        ({"dtype": "int8"}, "dtype"),
        ({"dwell_range": [1.0, 0.1]}, "dwell_range"),
        ({"focus": 3}, "focus"),
    ],
)
def test_invalid_options_raise_simulator_error_naming_the_option(options, named):
    with pytest.raises(SimulatorError, match=named):
        MicroscopeSimulator(**{**SMALL, **options})


def test_invalid_settings_raise_simulator_error(ihc):
    with pytest.raises(SimulatorError, match="outside the sample"):
        ihc.evaluate(at([200.0], [3.0]))
    with pytest.raises(SimulatorError, match="dwell"):
        ihc.evaluate(at([3.0], [3.0], dwell=[-1.0]))
    with pytest.raises(SimulatorError, match="missing"):
        ihc.evaluate({"x": torch.tensor([1.0])})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_same_measurements_as_cpu():
    options = {**SMALL, "seed": 5, "dtype": "float64", "beam_damage": 1.0}
    cpu, gpu = MicroscopeSimulator(**options), MicroscopeSimulator(**options, device="cuda")
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 63, 200), rng.uniform(0, 63, 200)
    a, b = cpu.evaluate(at(x, y)), gpu.evaluate(at(x, y))
    assert b.data.device.type == "cuda"
    assert float((a.data != b.data.cpu()).float().mean()) < 1e-3
    assert torch.allclose(a.metrics["total_counts"], b.metrics["total_counts"].cpu(), rtol=1e-3, atol=2.0)
