"""The telescope simulator: positions agree with astropy, depth behaves physically, slews cost time,
the weather comes from the shipped records, and one seed gives one night."""
from __future__ import annotations

import csv
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from simulators import SimulatorError, create
from simulators.telescope import FEATURES, METRICS, TelescopeSimulator, ephemeris, sky
from simulators.telescope.catalogue import Transients
from simulators.telescope.weather import CLOUD_RECORDS, Weather

ROOT = Path(__file__).resolve().parent.parent


def small(**options) -> TelescopeSimulator:
    """A quick simulator: a coarse tiling (about 300 fields) and few transients."""
    options.setdefault("catalogue", {"spacing": 10.0})
    options.setdefault("n_transients", 200)
    return TelescopeSimulator(**options)


def visible_rows(sim: TelescopeSimulator, n: int, margin: float = 15.0) -> torch.Tensor:
    """Rows of n fields well above the altitude limit now, highest first."""
    alt = sim.conditions()["altitude"]
    order = torch.argsort(alt, descending=True)
    keep = order[alt[order] > sim.altitude_limit + margin]
    return keep[:n].cpu()


def pointing(sim: TelescopeSimulator, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    c = sim.candidates()
    return {"ra": torch.as_tensor(c["ra"][rows.numpy()]), "dec": torch.as_tensor(c["dec"][rows.numpy()])}


# positions -----------------------------------------------------------------------------------

def test_altaz_agrees_with_astropy_within_a_tenth_of_a_degree():
    astropy = pytest.importorskip("astropy")  # noqa: F841
    from astropy.utils import iers

    iers.conf.auto_download = False
    iers.conf.iers_degraded_accuracy = "warn"
    import astropy.units as u
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord, get_body, get_sun
    from astropy.time import Time

    rng = np.random.default_rng(1)
    ra = rng.uniform(0.0, 360.0, 150)
    dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, 150)))
    sim = TelescopeSimulator(catalogue={"ra": ra, "dec": dec}, n_transients=0, images=False, nights=3)
    times = sim.start_mjd + np.linspace(0.0, 2.4, 9)
    cond = sim.conditions(torch.as_tensor(times).view(-1, 1))
    site = EarthLocation(lat=sim.site.latitude * u.deg, lon=sim.site.longitude * u.deg, height=sim.site.elevation * u.m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = Time(times, format="mjd", scale="utc")
        frame = AltAz(obstime=t[:, None], location=site)
        ref = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")[None, :].transform_to(frame)
        sun = get_sun(t).transform_to(AltAz(obstime=t, location=site))
        moon = get_body("moon", t, site).transform_to(AltAz(obstime=t, location=site))
    alt = cond["altitude"].numpy()
    d_az = (cond["azimuth"].numpy() - ref.az.deg + 180.0) % 360.0 - 180.0
    assert alt.shape == (9, 150)
    assert np.abs(alt - ref.alt.deg).max() < 0.1
    assert np.abs(d_az * np.cos(np.radians(ref.alt.deg))).max() < 0.1
    assert np.abs(cond["sun_altitude"][:, 0].numpy() - sun.alt.deg).max() < 0.1
    assert np.abs(cond["moon_altitude"][:, 0].numpy() - moon.alt.deg).max() < 0.5


def test_float32_positions_match_float64():
    a = small(dtype="float64", images=False)
    b = small(dtype="float32", images=False)
    assert torch.allclose(a.conditions()["altitude"], b.conditions()["altitude"].double(), atol=1e-3)


def test_night_runs_between_astronomical_twilights():
    sim = small(images=False)
    evening, morning = sim.night(0)
    edges = sim.conditions(torch.tensor([evening, morning], dtype=torch.float64).view(-1, 1))["sun_altitude"][:, 0]
    assert torch.allclose(edges, torch.full((2,), -18.0, dtype=edges.dtype), atol=0.05)
    middle = sim.conditions((evening + morning) / 2)["sun_altitude"][0]
    assert middle < -18.0
    assert 6.0 < (morning - evening) * 24.0 < 12.0


# depth and sky --------------------------------------------------------------------------------

def test_airmass_is_one_at_zenith_and_grows_toward_the_horizon():
    alt = torch.tensor([90.0, 60.0, 30.0, 10.0, 0.0], dtype=torch.float64)
    x = ephemeris.airmass(alt)
    assert abs(float(x[0]) - 1.0) < 1e-3
    assert abs(float(x[1]) - 1.0 / math.sin(math.radians(60.0))) < 0.01
    assert torch.all(x[1:] > x[:-1])
    assert 30.0 < float(x[-1]) < 40.0


def _depth(alt=80.0, moon_sep=90.0, moon_alt=-10.0, phase=90.0, sun_alt=-25.0, cloud=0.0, exposure=30.0):
    band = sky.BANDS["r"]
    t = lambda v: torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
    x = ephemeris.airmass(t(alt))
    sky_mag = sky.sky_brightness(band, t(alt), t(moon_sep), t(moon_alt), t(phase), t(sun_alt))
    seeing = sky.delivered_seeing(band, t(0.7), x)
    return float(sky.limiting_magnitude(band, sky_mag, seeing, x, exposure, 1.5 * cloud / 8.0))


def test_depth_is_deepest_at_zenith_in_dark_time_and_shallower_with_moon_twilight_and_cloud():
    dark_zenith = _depth(alt=90.0)
    assert 24.0 < dark_zenith < 24.7
    assert _depth(alt=30.0) < _depth(alt=60.0) < dark_zenith
    assert _depth(moon_alt=40.0, phase=0.0, moon_sep=30.0) < _depth(moon_alt=40.0, phase=0.0, moon_sep=100.0) < _depth()
    assert _depth(moon_alt=40.0, phase=0.0) < _depth(moon_alt=40.0, phase=120.0) < _depth(moon_alt=-5.0, phase=0.0)
    assert _depth(sun_alt=-12.0) < _depth(sun_alt=-15.0) < _depth(sun_alt=-18.0) <= _depth(sun_alt=-30.0) + 0.05
    assert _depth(cloud=6.0) < _depth(cloud=2.0) < _depth(cloud=0.0)
    assert _depth(exposure=120.0) - _depth(exposure=30.0) == pytest.approx(1.25 * math.log10(4.0))


def test_full_moon_brightens_the_sky_by_magnitudes_and_blue_more_than_red():
    args = [torch.tensor([v], dtype=torch.float64) for v in (60.0, 40.0, 50.0, 0.0, -30.0)]
    brightening = {b: float(sky.sky_brightness(sky.BANDS[b], *args)) - sky.BANDS[b].sky_dark for b in "gz"}
    assert brightening["g"] < brightening["z"] < 0.0
    assert brightening["g"] < -2.0


def test_simulated_depth_follows_altitude_across_the_sky():
    sim = small(images=False)
    c = sim.conditions()
    up = c["altitude"] > 25.0
    rho = np.corrcoef(c["altitude"][up].numpy(), c["depth"][up].numpy())[0, 1]
    assert rho > 0.6


# slews ----------------------------------------------------------------------------------------

def test_slew_cost_grows_with_angular_distance():
    sim = small(images=False)
    start = {"ra": float(sim.candidates()["ra"][int(visible_rows(sim, 1)[0])]), "dec": -30.0}
    costs = [sim.move_cost(start, {"ra": start["ra"], "dec": -30.0 + d}) for d in (0.0, 1.0, 5.0, 20.0, 45.0)]
    assert costs[0] == 0.0
    assert all(a < b for a, b in zip(costs, costs[1:]))
    assert costs[1] >= sim.mount.settle
    rng = np.random.default_rng(0)
    rows = visible_rows(sim, 60).numpy()
    c = sim.candidates()
    pairs = rng.choice(rows, size=(80, 2))
    sep = [float(ephemeris.separation(*(torch.tensor(v) for v in (c["ra"][i], c["dec"][i], c["ra"][j], c["dec"][j]))))
           for i, j in pairs]
    cost = [sim.move_cost({"ra": c["ra"][i], "dec": c["dec"][i]}, {"ra": c["ra"][j], "dec": c["dec"][j]}) for i, j in pairs]
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    assert np.corrcoef(ranks(sep), ranks(cost))[0, 1] > 0.7


def test_evaluate_advances_the_clock_by_slew_readout_and_exposure():
    sim = small(exposure=20.0)
    rows = visible_rows(sim, 3)
    before = sim.clock
    result = sim.evaluate(pointing(sim, rows))
    duration = result.metrics["duration"]
    assert torch.all(duration >= 20.0)
    assert sim.clock == pytest.approx(before + float(duration.sum()) / 86400.0, abs=1e-9)
    assert torch.all(result.metrics["time"][1:] > result.metrics["time"][:-1])
    again = sim.evaluate(pointing(sim, rows[-1:]))
    assert float(again.metrics["duration"][0]) == pytest.approx(20.0 + sim.mount.readout)


# limits and errors ----------------------------------------------------------------------------

def test_target_below_the_altitude_limit_raises_simulator_error_and_changes_nothing():
    sim = small()
    low = int(torch.argmin(sim.conditions()["altitude"]))
    clock = sim.clock
    with pytest.raises(SimulatorError, match="below the altitude limit"):
        sim.evaluate(pointing(sim, torch.tensor([low])))
    ok = visible_rows(sim, 1)
    with pytest.raises(SimulatorError, match="observation 1"):
        sim.evaluate(pointing(sim, torch.tensor([int(ok[0]), low])))
    assert sim.clock == clock
    assert sim.move_cost(pointing_dict(sim, int(ok[0])), pointing_dict(sim, low)) == math.inf
    with pytest.raises(SimulatorError):
        sim.step(low)


def pointing_dict(sim: TelescopeSimulator, row: int) -> dict[str, float]:
    c = sim.candidates()
    return {"ra": float(c["ra"][row]), "dec": float(c["dec"][row])}


@pytest.mark.parametrize("option, value", [
    ("exposure", -5.0), ("band", "q"), ("site", "atlantis"), ("catalogue", "no/such/file.csv"),
    ("dtype", "float16"), ("altitude_limit", 95.0), ("mount", {"warp": 9.0}), ("n_transients", -1),
    ("date", "yesterday"), ("cutout_size", 4), ("exposure_range", [10.0, 5.0]),
])
def test_bad_options_raise_simulator_error_naming_the_option(option, value):
    with pytest.raises(SimulatorError, match=option):
        small(**{option: value})


def test_pointing_far_from_every_field_is_refused():
    sim = TelescopeSimulator(catalogue={"ra": [150.0, 160.0], "dec": [-30.0, -30.0]}, n_transients=0)
    with pytest.raises(SimulatorError, match="match_radius"):
        sim.evaluate({"ra": torch.tensor([10.0]), "dec": torch.tensor([40.0])})


def test_catalogue_loads_from_csv(tmp_path):
    path = tmp_path / "fields.csv"
    path.write_text("field_id,ra,dec,class,priority\n11,150.0,-30.0,deep,3\n12,152.0,-28.0,wide,1\n")
    sim = TelescopeSimulator(catalogue=str(path), n_transients=5)
    c = sim.candidates()
    assert c["field_id"].tolist() == [11, 12]
    assert c["class"].tolist() == ["deep", "wide"]
    assert c["priority"].tolist() == [3.0, 1.0]
    assert sorted(sim.transients.field.tolist())[-1] <= 1


# determinism and weather ------------------------------------------------------------------------

def test_same_seed_gives_the_same_night_and_another_seed_another():
    a, b, c = small(seed=5), small(seed=5), small(seed=6)
    rows = visible_rows(a, 4)
    ra, rb, rc = (s.evaluate(pointing(s, rows)) for s in (a, b, c))
    for k in METRICS:
        assert torch.equal(ra.metrics[k], rb.metrics[k]), k
    assert torch.equal(ra.data, rb.data)
    assert not torch.equal(ra.data, rc.data)
    assert torch.equal(a.features(), b.features())
    a.reset(6)
    assert torch.equal(a.weather.oktas, c.weather.oktas)


def test_cloud_cover_is_drawn_from_the_shipped_records():
    assert CLOUD_RECORDS.is_file()
    assert (CLOUD_RECORDS.parent / "SEO_weather_LICENSE.md").read_text().count("BSD 3-Clause") >= 1
    with open(CLOUD_RECORDS, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["hour"][-2:]) in (*range(18, 24), *range(0, 6))]
    record_clear = np.mean([int(r["oktas"]) == 0 for r in rows])
    nights = []
    for seed in range(300):
        w = Weather(60000.0, torch.Generator().manual_seed(seed))
        t = 60000.0 + (6.5 + torch.arange(12, dtype=torch.float64)) / 24.0
        nights.append(w.cloud(t).numpy())
    cover = np.concatenate(nights)
    assert set(np.unique(cover)) <= {0.0, 2.0, 4.0, 7.0, 8.0}
    assert abs(float(np.mean(cover == 0)) - record_clear) < 0.07
    assert 0.2 < float(np.mean(cover == 8)) < 0.5


def test_clouds_make_depth_shallower_and_overcast_closes_the_dome():
    sim = small()
    rows = visible_rows(sim, 1)
    sim.weather.oktas[:] = 0.0
    clear = sim.conditions(rows=rows)["depth"]
    sim.weather.oktas[:] = 4.0
    assert float(sim.conditions(rows=rows)["depth"]) == pytest.approx(float(clear) - 0.75)
    sim.weather.oktas[:] = 8.0
    result = sim.evaluate(pointing(sim, rows))
    assert float(result.metrics["depth"][0]) == 0.0 and float(result.metrics["reward"][0]) == 0.0
    assert not result.metadata[0]["dome_open"]
    assert float(result.data.abs().max()) == 0.0
    assert not bool(sim.features()[:, FEATURES.index("observable")].any())


_OPENED: list[str] | None = None  # paths opened while recording (audit hooks cannot be removed)


def _record_opens(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, Path)):
        _OPENED.append(str(Path(os.fsdecode(args[0])).resolve()))


def test_simulator_reads_nothing_outside_the_package():
    """Every file that building, stepping and evaluating the simulator opens lies in the simulators
    package (its data files) or a temp folder: no project folder, no home, no network cache."""
    global _OPENED
    if not getattr(sys, "_aec_open_hook", False):
        sys.addaudithook(_record_opens)
        sys._aec_open_hook = True
    from simulators.telescope import imaging, weather

    imaging._hubble_deep_field.cache_clear()  # files read once per process: read them again, recorded
    weather.cloud_records.cache_clear()
    _OPENED = []
    try:
        sim = small(seed=5)
        rows = visible_rows(sim, 2)
        sim.evaluate(pointing(sim, rows))
        sim.features()
    finally:
        opened, _OPENED = _OPENED, None
    # the package, temp folders, and the interpreter's and installed libraries' own files (imports)
    allowed = [(ROOT / "simulators").resolve(), Path(tempfile.gettempdir()).resolve()]
    allowed += [Path(p).resolve() for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}]
    outside = [p for p in opened if not any(Path(p).is_relative_to(a) for a in allowed)]
    assert not outside, outside
    assert any(p.endswith(".csv") and Path(p).is_relative_to(allowed[0]) for p in opened)  # the hook saw the cloud records


# transients, rewards, images ----------------------------------------------------------------

def test_light_curves_rise_to_the_peak_magnitude_then_decline_slower():
    one = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    tr = Transients(field=torch.tensor([0]), x=one(0.0), y=one(0.0), peak_mjd=one(100.0), peak_mag=one(20.0),
                    rise=one(3.0), fall=one(30.0), kind=torch.tensor([0]))
    t = torch.tensor([80.0, 95.0, 100.0, 105.0, 120.0], dtype=torch.float64)
    m = tr.magnitude(t)
    assert float(m[2]) == pytest.approx(20.0, abs=1e-9)
    assert m[0] > m[1] > m[2] and m[2] < m[3] < m[4]
    assert float(m[4] - m[2]) < float(m[0] - m[2])


def test_transients_shine_only_after_their_explosion_a_realistic_rise_time_before_peak():
    sim = small(n_transients=3000, seed=6)
    tr = sim.transients
    lead = tr.peak_mjd - tr.explosion
    ia = tr.kind == 0
    assert bool((lead[ia] >= 15.0).all() & (lead[ia] <= 22.0).all())
    assert bool((lead[~ia] >= 5.0).all() & (lead[~ia] <= 15.0).all())
    before = tr.magnitude(tr.explosion - 0.5)
    after = tr.magnitude(tr.explosion + 0.5)
    assert bool((before >= 90.0).all()) and bool((after < 40.0).all())
    # the Bazin tail alone keeps a bright Ia visible a month before its peak; drawn transients are dark then
    bazin_only = Transients(**{**vars(tr), "explosion": None})
    month_early = tr.peak_mjd - 30.0
    assert int((bazin_only.magnitude(month_early) < 25.0).sum()) > 50
    assert int((tr.magnitude(month_early) < 25.0).sum()) == 0


def test_a_transient_before_its_explosion_is_neither_detected_nor_rewarded():
    sim = small(n_transients=3000, seed=6, images=False)
    row = int(visible_rows(sim, 1)[0])
    tr = sim.transients
    hosted = torch.nonzero(tr.field == row).view(-1)
    now = sim.clock
    # make every transient of the field a bright Ia 25 days before its peak: Bazin alone puts it near 22 mag
    tr.kind[hosted], tr.rise[hosted], tr.fall[hosted] = 0, 3.0, 30.0
    tr.peak_mag[hosted], tr.peak_mjd[hosted], tr.explosion[hosted] = 18.5, now + 25.0, now + 25.0 - 18.0
    result = sim.evaluate({**pointing(sim, torch.tensor([row])), "exposure": torch.tensor([300.0])})
    assert result.metrics["n_detected"][0] == 0
    seen = result.metadata[0]["transients"]
    assert len(seen) == len(hosted) > 0 and not any(t["detected"] for t in seen)
    depth_only = sim.depth_weight * (float(result.metrics["depth"][0]) - sim.depth_floor)
    assert float(result.metrics["reward"][0]) == pytest.approx(max(depth_only, 0.0), rel=1e-9)


def test_reward_values_new_epochs_of_active_transients_and_depth():
    sim = small(n_transients=1500, seed=2)
    counts = torch.bincount(sim.transients.field, minlength=len(sim.fields)).double()
    alt = sim.conditions()["altitude"]
    row = int(torch.argmax(torch.where(alt > 45.0, counts, torch.zeros_like(counts))))
    first = sim.evaluate(pointing(sim, torch.tensor([row])))
    second = sim.evaluate(pointing(sim, torch.tensor([row])))
    assert first.metrics["n_detected"][0] >= 1
    assert first.metrics["snr_max"][0] >= 5.0
    assert float(first.metrics["reward"][0]) > float(first.metrics["n_detected"][0]) * 0.99
    assert float(second.metrics["reward"][0]) < 0.05 * float(first.metrics["reward"][0])
    assert sim.features()[row, FEATURES.index("known_active")] >= 1


def test_cutouts_show_the_static_sky_and_get_cleaner_with_longer_exposures():
    sim = small(seed=4)
    assert sim.data_shape() == (64, 64)
    row = visible_rows(sim, 1)
    short = sim.evaluate({**pointing(sim, row), "exposure": torch.tensor([5.0])}).data[0]
    long = sim.evaluate({**pointing(sim, row), "exposure": torch.tensor([600.0])}).data[0]
    assert short.dtype == torch.float32 and short.shape == (64, 64)
    residual = lambda im: (im[1:, :] - im[:-1, :]).abs().median()  # noqa: E731
    assert residual(long) < 0.5 * residual(short)
    static = sim.static_sky.cutouts(row)[0]
    assert np.corrcoef(static.flatten().numpy(), long.flatten().numpy())[0, 1] > 0.3


# the instrument and sequential interfaces ---------------------------------------------------

def test_instrument_description_and_pool():
    sim = create("telescope", catalogue={"spacing": 10.0}, n_transients=10)
    names = [p["name"] for p in sim.parameters()]
    assert names == ["ra", "dec"]
    assert sim.objectives() == [{"metric": "reward", "goal": "maximize"}]
    c = sim.candidates()
    assert {"field_id", "ra", "dec", "priority", "class"} <= set(c)
    assert len({len(v) for v in c.values()}) == 1
    assert sim.metrics() == METRICS
    with_exposure = small(exposure_range=[10.0, 300.0])
    assert [p["name"] for p in with_exposure.parameters()] == ["ra", "dec", "exposure"]


def test_extra_pool_columns_and_field_ids_are_accepted():
    sim = small()
    row = int(visible_rows(sim, 1)[0])
    c = sim.candidates()
    params = {"field_id": torch.tensor([float(c["field_id"][row])]), "ra": torch.tensor([c["ra"][row]]),
              "dec": torch.tensor([c["dec"][row]]), "priority": torch.tensor([1.0]), "class": ["survey"]}
    result = sim.evaluate(params)
    assert result.metadata[0]["field_id"] == int(c["field_id"][row])
    snapped = sim.evaluate({"ra": torch.tensor([c["ra"][row] + 0.5]), "dec": torch.tensor([c["dec"][row]])})
    assert snapped.metadata[0]["field_id"] == int(c["field_id"][row])


def test_sequential_interface_steps_through_the_night_until_done():
    sim = small(images=False)
    sim.reset(9)
    feats = sim.features()
    assert feats.shape == (len(sim.fields), len(FEATURES))
    assert torch.isfinite(feats).all()
    mask = sim.action_mask()
    first = int(torch.nonzero(mask)[0])
    obs, reward, done, info = sim.step(first)
    assert obs.shape == feats.shape and isinstance(reward, float) and not done
    assert obs[first, FEATURES.index("n_visits")] == 1.0
    assert obs[first, FEATURES.index("since_visit")] < 0.01
    evening, morning = sim.night(0)
    sim.wait((morning - sim.clock) * 86400.0 - 200.0)
    steps = 0
    while not done:
        target = int(torch.argmax(sim.features()[:, FEATURES.index("altitude")]))
        obs, reward, done, info = sim.step(target)
        steps += 1
    assert 1 <= steps <= 6
    with pytest.raises(SimulatorError, match="reset"):
        sim.step(target)
    sim.reset(9)
    assert sim.clock == evening and not sim.done


def test_evaluate_after_morning_twilight_moves_to_the_next_night():
    sim = small(images=False, nights=2)
    _, morning = sim.night(0)
    evening1, _ = sim.night(1)
    sim.clock = morning - 10.0 / 86400.0
    c = sim.candidates()
    alt_next = sim.conditions(evening1 + 0.01)["altitude"]
    row = int(torch.argmax(alt_next))
    result = sim.evaluate({"ra": torch.tensor([c["ra"][row]]), "dec": torch.tensor([c["dec"][row]])})
    assert result.metadata[0]["night"] == 1
    assert result.metadata[0]["mjd"] >= evening1


def test_example_campaign_file_names_the_telescope_pool():
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load((ROOT / "examples" / "telescope_night.yaml").read_text())
    assert data["instrument"]["kind"] == "simulator" and data["instrument"]["name"] == "telescope"
    assert data["space"]["pool"]["simulator"] is True
    sim = create("telescope", **data["instrument"]["options"])
    assert len(sim.candidates()["ra"]) > 40


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    cpu, gpu = small(seed=3), small(seed=3, device="cuda")
    assert torch.allclose(cpu.features(), gpu.features().cpu(), atol=1e-6)
    rows = visible_rows(cpu, 3)
    a, b = cpu.evaluate(pointing(cpu, rows)), gpu.evaluate(pointing(gpu, rows))
    for k in ("depth", "reward", "airmass", "time"):
        assert torch.allclose(a.metrics[k], b.metrics[k].cpu(), atol=1e-6), k
    assert b.data.device.type == "cuda"
