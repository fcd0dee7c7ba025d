"""TelescopeSimulator: a survey telescope at a real site observing a target catalogue night after night.

The instrument's setting is a pointing (ra, dec in ICRS degrees), snapped to the nearest catalogue
field; `evaluate` observes a batch of settings one after another, advancing the clock by slew,
settle, readout and exposure, and returns per observation the depth reached, the transients seen,
a science reward and an image cutout. `features()` / `step()` form a sequential-decision interface
with the same physics, vectorised over every field at once; `features_batch` and `batch.NightBatch`
step many nights at once for the RL scheduler (policies/rl).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from simulators.base import SimResult, SimulatorError
from simulators.telescope import ephemeris, imaging, sky
from simulators.telescope.catalogue import TRANSIENT_CLASSES, Fields, build_fields, draw_transients
from simulators.telescope.mount import Mount
from simulators.telescope.site import Calendar, Site, parse_date, resolve_site
from simulators.telescope.survey import SINCE_CAP_DAYS, Epoch, SurveyLog
from simulators.telescope.weather import Weather

METRICS = ["reward", "depth", "snr_max", "n_detected", "airmass", "altitude", "seeing", "sky_brightness",
           "moon_separation", "cloud", "duration", "time"]
FEATURES = ["altitude", "airmass", "hour_angle", "moon_separation", "sky_brightness", "seeing", "depth",
            "slew_time", "since_visit", "n_visits", "known_active", "priority", "observable",
            "night_left", "cloud", "moon_illumination", "sun_altitude"]
_PARK = (90.0, 0.0)


def _number(name: str, value: Any, low: float, high: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SimulatorError(f"{name} must be a number, got {value!r}") from None
    if not (low <= v <= high) or math.isnan(v):
        raise SimulatorError(f"{name} must lie in [{low:g}, {high:g}], got {v:g}")
    return v


def _seeds(seed: int, n: int) -> list[int]:
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]


class TelescopeSimulator:
    """A seeded, torch-vectorised survey telescope.

    Options: site (name or {latitude, longitude, elevation}), date (local date of the first
    evening), nights (length of the survey for `step`/`done`; `evaluate` keeps going), catalogue
    (CSV path, {file}, tiling {spacing, dec_min, dec_max, ra_min, ra_max} or explicit columns
    {ra, dec, field_id, priority, class}; default: a 3.5-deg tiling of the sky the site reaches),
    n_transients, exposure (s), exposure_range ([low, high] s: adds an `exposure` parameter), band
    (u g r i z y), altitude_limit (deg), twilight (Sun altitude bounding the night, deg), seed,
    device, dtype, cutout_size (pixels), pixel_scale (arcsec), images (render cutouts),
    dome_close_oktas, cloud_extinction (mag at 8 oktas), seeing_median (arcsec), aperture (m),
    cadence (days between valuable epochs), depth_weight, depth_floor (mag), match_radius (deg),
    mount ({az_speed, alt_speed, az_accel, alt_accel, settle, readout}).
    """

    name = "telescope"

    def __init__(
        self,
        site: str | dict[str, Any] = "cerro_pachon",
        date: str = "2025-03-20",
        nights: int = 1,
        catalogue: Any = None,
        n_transients: int = 1000,
        exposure: float = 30.0,
        exposure_range: list[float] | None = None,
        band: str = "r",
        altitude_limit: float = 20.0,
        twilight: float = -18.0,
        seed: int = 0,
        device: str = "cpu",
        dtype: str = "float64",
        cutout_size: int = 64,
        pixel_scale: float = 0.2,
        images: bool = True,
        dome_close_oktas: float = 8.0,
        cloud_extinction: float = 1.5,
        seeing_median: float = 0.7,
        aperture: float = sky.REFERENCE_APERTURE,
        cadence: float = 3.0,
        depth_weight: float = 0.5,
        depth_floor: float = 22.0,
        match_radius: float = 5.0,
        mount: dict[str, float] | None = None,
    ):
        self.site: Site = resolve_site(site)
        self.start_date = parse_date(date)
        self.n_nights = int(_number("nights", nights, 1, 366))
        if str(band) not in sky.BANDS:
            raise SimulatorError(f"band must be one of {sorted(sky.BANDS)}, got {band!r}")
        self.band = sky.BANDS[str(band)]
        self.exposure = _number("exposure", exposure, 0.1, 3600.0)
        self.exposure_range: tuple[float, float] | None = None
        if exposure_range is not None:
            try:
                lo, hi = (float(v) for v in exposure_range)
            except (TypeError, ValueError):
                raise SimulatorError(f"exposure_range must be [low, high] seconds, got {exposure_range!r}") from None
            if not 0.1 <= lo < hi <= 3600.0:
                raise SimulatorError(f"exposure_range must satisfy 0.1 <= low < high <= 3600 s, got {exposure_range!r}")
            self.exposure_range = (lo, hi)
        self.altitude_limit = _number("altitude_limit", altitude_limit, 0.0, 89.0)
        self.twilight = _number("twilight", twilight, -30.0, -6.0)
        self.n_transients = int(_number("n_transients", n_transients, 0, 10_000_000))
        self.cutout_size = int(_number("cutout_size", cutout_size, 8, 512))
        self.pixel_scale = _number("pixel_scale", pixel_scale, 0.01, 10.0)
        self.images = bool(images)
        self.dome_close_oktas = _number("dome_close_oktas", dome_close_oktas, 0.0, 9.0)
        self.cloud_extinction = _number("cloud_extinction", cloud_extinction, 0.0, 20.0)
        self.seeing_median = _number("seeing_median", seeing_median, 0.1, 5.0)
        self.aperture = _number("aperture", aperture, 0.05, 50.0)
        self.cadence = _number("cadence", cadence, 1e-3, 365.0)
        self.depth_weight = _number("depth_weight", depth_weight, 0.0, 1e6)
        self.depth_floor = _number("depth_floor", depth_floor, 0.0, 40.0)
        self.match_radius = _number("match_radius", match_radius, 0.0, 180.0)
        try:
            self.mount = Mount(**{k: float(v) for k, v in (mount or {}).items()})
        except (TypeError, ValueError, AttributeError) as exc:
            raise SimulatorError(f"mount: {exc}; give numbers for az_speed, alt_speed, az_accel, alt_accel, "
                                 "settle, readout") from None
        if min(self.mount.az_speed, self.mount.alt_speed, self.mount.az_accel, self.mount.alt_accel) <= 0:
            raise SimulatorError("mount: speeds and accelerations must be > 0")
        if min(self.mount.settle, self.mount.readout) < 0:
            raise SimulatorError("mount: settle and readout must be >= 0")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            raise SimulatorError(f"device: not a torch device: {device!r}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SimulatorError("device: CUDA was asked for but is not available")
        if dtype not in ("float32", "float64"):
            raise SimulatorError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.dtype = getattr(torch, dtype)
        self.seed = int(seed)

        reach = 90.0 - self.altitude_limit
        dec_range = (max(-90.0, self.site.latitude - reach), min(90.0, self.site.latitude + reach))
        self.fields: Fields = build_fields(catalogue, dec_range)
        self.calendar = Calendar(self.site, self.start_date, self.twilight)
        first_evening, _ = self.night(0)
        self.noon0 = self.calendar.noon0
        self.start_mjd = first_evening
        mid = first_evening + 0.5 * self.n_nights
        ra = torch.as_tensor(self.fields.ra, dtype=torch.float64)
        dec = torch.as_tensor(self.fields.dec, dtype=torch.float64)
        ra_date, dec_date = ephemeris.precess(ra, dec, mid)
        self._precession = ephemeris.precession_matrix(mid)
        self._ra = ra_date.to(device=self.device, dtype=self.dtype)
        self._dec = dec_date.to(device=self.device, dtype=self.dtype)
        self._unit_j2000 = ephemeris.unit_vector(ra, dec).to(device=self.device, dtype=self.dtype)
        self._priority = torch.as_tensor(self.fields.priority, device=self.device, dtype=self.dtype)
        self._ra_cpu, self._dec_cpu = ra_date, dec_date
        self._row_of_id = {int(v): i for i, v in enumerate(self.fields.field_id)}
        self.reset(self.seed)

    # the simulated world ----------------------------------------------------------------------

    def night(self, k: int) -> tuple[float, float]:
        """(evening, morning) twilight MJD of night k (0 = the first)."""
        return self.calendar.night(k)

    def reset(self, seed: int | None = None) -> None:
        """Restart the survey: clock at the first evening twilight, fresh weather and transients for `seed`."""
        if seed is not None:
            self.seed = int(seed)
        s_weather, s_transients, s_sky, s_noise = _seeds(self.seed, 4)
        self.weather = Weather(self.noon0, torch.Generator().manual_seed(s_weather), self.device,
                               seeing_median=self.seeing_median)
        self.weather.ensure(self.n_nights)
        end = self.night(self.n_nights - 1)[1]
        g = torch.Generator().manual_seed(s_transients)
        tr = draw_transients(self.n_transients, len(self.fields), torch.ones(len(self.fields)),
                             (self.start_mjd - 40.0, end + 20.0), g)
        self.static_sky = imaging.StaticSky(len(self.fields), self.cutout_size,
                                            torch.Generator().manual_seed(s_sky), self.device)
        if len(tr):
            tr.x, tr.y = imaging.host_positions(self.static_sky, tr.field.to(self.device), g)
        self.transients = tr
        self._by_field = torch.argsort(tr.field, stable=True)
        counts = torch.bincount(tr.field, minlength=len(self.fields))
        self._field_start = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        self._noise = torch.Generator(device=self.device).manual_seed(s_noise)
        self.survey = SurveyLog(self.fields.priority, tr.field, self.cadence, self.depth_weight, self.depth_floor,
                                self.device)
        self.clock = self.start_mjd
        self.pointing = _PARK
        self._exposed = False

    # what the instrument accepts and returns ------------------------------------------------------

    def parameters(self) -> list[dict[str, Any]]:
        params: list[dict[str, Any]] = [
            {"name": "ra", "type": "real", "low": 0.0, "high": 360.0},
            {"name": "dec", "type": "real", "low": -90.0, "high": 90.0},
        ]
        if self.exposure_range is not None:
            low, high = self.exposure_range
            params.append({"name": "exposure", "type": "real", "low": low, "high": high})
        return params

    def metrics(self) -> list[str]:
        return list(METRICS)

    def objectives(self) -> list[dict[str, Any]]:
        return [{"metric": "reward", "goal": "maximize"}]

    def data_shape(self) -> tuple[int, int] | None:
        return (self.cutout_size, self.cutout_size) if self.images else None

    def candidates(self) -> dict[str, np.ndarray]:
        """The target catalogue as a pool: field_id, ra, dec (ICRS deg), priority, class."""
        f = self.fields
        return {"field_id": f.field_id.copy(), "ra": f.ra.copy(), "dec": f.dec.copy(),
                "priority": f.priority.copy(), "class": f.kind.copy()}

    # conditions, vectorised over targets and times --------------------------------------------

    def conditions(self, mjd: float | torch.Tensor | None = None, rows: torch.Tensor | None = None,
                   exposure: float | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Observing conditions of field rows `rows` (all by default) at `mjd` (the clock by default), broadcast.

        Returns tensors (in the simulator's dtype, on its device) of altitude, azimuth, hour_angle
        (deg), airmass, moon_separation, moon_altitude, moon_illumination, sun_altitude,
        sky_brightness (mag/arcsec^2), seeing (delivered FWHM, arcsec), cloud (oktas), dome_open,
        and depth (5-sigma limiting magnitude; dome closed or below the horizon still gives the
        sky-limited value, see `observable`), observable (above the altitude limit, dome open).
        """
        t = torch.as_tensor(self.clock if mjd is None else mjd, dtype=torch.float64, device=self.device)
        ra = self._ra if rows is None else self._ra[rows.to(self.device)]
        dec = self._dec if rows is None else self._dec[rows.to(self.device)]
        lst = ephemeris.local_sidereal_time(t, self.site.longitude)
        sun_ra, sun_dec = ephemeris.sun_position(t)
        sun_alt = ephemeris.horizontal(lst - sun_ra, sun_dec, self.site.latitude)[0]
        moon_ra, moon_dec = ephemeris.moon_position(t, lst, self.site.latitude, self.site.elevation)
        moon_alt = ephemeris.horizontal(lst - moon_ra, moon_dec, self.site.latitude)[0]
        phase = ephemeris.moon_phase_angle(t)
        cast = lambda v: v.to(self.dtype)  # noqa: E731
        ha = ephemeris.wrap180(cast(lst) - ra)
        alt, az = ephemeris.horizontal(ha, dec, self.site.latitude)
        x = ephemeris.airmass(alt)
        moon_sep = ephemeris.separation(ra, dec, cast(moon_ra), cast(moon_dec))
        sky_mag = sky.sky_brightness(self.band, alt, moon_sep, cast(moon_alt), cast(phase), cast(sun_alt))
        seeing = sky.delivered_seeing(self.band, cast(self.weather.seeing(t)), x)
        cloud = cast(self.weather.cloud(t))
        expo = self.exposure if exposure is None else exposure
        depth = sky.limiting_magnitude(self.band, sky_mag, seeing, x, expo,
                                       self.cloud_extinction * cloud / 8.0, self.aperture)
        dome_open = cloud < self.dome_close_oktas
        shape = alt.shape
        full = lambda v: cast(v).expand(shape)  # noqa: E731
        return {
            "altitude": alt, "azimuth": az, "hour_angle": ha, "airmass": x, "moon_separation": moon_sep,
            "moon_altitude": full(moon_alt), "moon_illumination": full(ephemeris.illuminated_fraction(phase)),
            "sun_altitude": full(sun_alt), "sky_brightness": sky_mag, "seeing": seeing, "cloud": cloud.expand(shape),
            "dome_open": dome_open.expand(shape), "depth": depth,
            "observable": (alt >= self.altitude_limit) & dome_open,
        }

    def _altaz(self, rows: torch.Tensor, mjd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alt, az) float64 on the CPU of field rows at times (broadcast), for planning."""
        lst = ephemeris.local_sidereal_time(mjd, self.site.longitude)
        return ephemeris.horizontal(lst - self._ra_cpu[rows], self._dec_cpu[rows], self.site.latitude)

    # the clock ----------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True when no exposure of the default length fits in the survey's last night any more."""
        return self.clock + self.exposure / 86400.0 > self.night(self.n_nights - 1)[1]

    # observing ----------------------------------------------------------------------------------

    def _rows_of(self, params: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Catalogue rows (b,) and the snap distance in degrees (b,) of a batch of settings."""
        if "field_id" in params and not isinstance(params["field_id"], list):
            ids = torch.as_tensor(params["field_id"]).reshape(-1).cpu().to(torch.float64)
            lookup = self._row_of_id
            rows = []
            for v in ids.tolist():
                if v != round(v) or int(v) not in lookup:
                    raise SimulatorError(f"field_id {v:g} is not in the catalogue")
                rows.append(lookup[int(v)])
            return torch.as_tensor(rows, dtype=torch.long), torch.zeros(len(rows), dtype=torch.float64)
        missing = [k for k in ("ra", "dec") if k not in params]
        if missing:
            raise SimulatorError(f"telescope: missing parameters {missing}; give ra and dec (deg) or field_id")
        try:
            ra = torch.as_tensor(params["ra"], dtype=torch.float64).reshape(-1).cpu()
            dec = torch.as_tensor(params["dec"], dtype=torch.float64).reshape(-1).cpu()
        except (TypeError, ValueError, RuntimeError):
            raise SimulatorError("telescope: ra and dec must be numeric tensors of shape (b,)") from None
        if ra.shape != dec.shape:
            raise SimulatorError(f"telescope: ra and dec differ in length ({ra.numel()} vs {dec.numel()})")
        if not bool(torch.isfinite(ra).all() & torch.isfinite(dec).all()) or bool((dec.abs() > 90).any()):
            raise SimulatorError("telescope: ra must be finite and dec within [-90, 90] degrees")
        q = ephemeris.unit_vector(ra, dec).to(device=self.device, dtype=self.dtype)
        best = (q @ self._unit_j2000.T).max(dim=1)
        distance = torch.rad2deg(torch.acos(best.values.to(torch.float64).clamp(-1.0, 1.0))).cpu()
        far = distance > self.match_radius
        if bool(far.any()):
            i = int(torch.nonzero(far)[0])
            raise SimulatorError(
                f"no catalogue field within match_radius={self.match_radius:g} deg of ra={float(ra[i]):.3f}, "
                f"dec={float(dec[i]):.3f} (nearest is {float(distance[i]):.2f} deg away)")
        return best.indices.cpu(), distance

    def _exposures_of(self, params: dict[str, Any], b: int) -> torch.Tensor:
        if "exposure" not in params or isinstance(params["exposure"], list):
            return torch.full((b,), self.exposure, dtype=torch.float64)
        e = torch.as_tensor(params["exposure"], dtype=torch.float64).reshape(-1).cpu()
        if e.numel() not in (1, b):
            raise SimulatorError(f"exposure has {e.numel()} values for a batch of {b}")
        e = e.expand(b)
        if not bool(((e >= 0.1) & (e <= 3600.0)).all()):
            raise SimulatorError(f"exposure must lie in [0.1, 3600] s, got {e.tolist()}")
        return e.clone()

    def _plan(self, rows: torch.Tensor, exposures: torch.Tensor) -> list[dict[str, float]]:
        """Start times, slews and overheads of observing `rows` in order from the current state (no side effects)."""
        t, (alt0, az0), exposed = self.clock, self.pointing, self._exposed
        plan = []
        for k, (row, expo) in enumerate(zip(rows.tolist(), exposures.tolist())):
            one = torch.tensor([row])
            t0 = self.calendar.fit(t, expo)
            fresh = t0 != t or not exposed
            while True:
                alt, az = self._altaz(one, torch.tensor([t0], dtype=torch.float64))
                here = torch.tensor([alt0, az0], dtype=torch.float64)
                slew = float(self.mount.slew_time(here[0], here[1], alt, az)[0])
                overhead = slew if fresh else max(slew, self.mount.readout)
                start = t0 + overhead / 86400.0
                if self.calendar.fit(start, expo) == start:
                    break
                t0, fresh = self.calendar.fit(start, expo), True
            end = start + expo / 86400.0
            alts, azs = self._altaz(one, torch.tensor([start, end], dtype=torch.float64))
            low = float(alts.min())
            if low < self.altitude_limit:
                when = ephemeris.datetime_from_mjd(start).strftime("%Y-%m-%d %H:%M:%S")
                raise SimulatorError(
                    f"observation {k}: field {int(self.fields.field_id[row])} (ra={self.fields.ra[row]:.3f}, "
                    f"dec={self.fields.dec[row]:.3f}) is at altitude {low:.1f} deg at {when} UTC, below the "
                    f"altitude limit of {self.altitude_limit:g} deg; it cannot be observed then")
            plan.append({"start": start, "end": end, "slew": slew, "overhead": overhead,
                         "duration": (end - self.clock if k == 0 else end - plan[-1]["end"]) * 86400.0,
                         "alt_end": float(alts[1]), "az_end": float(azs[1])})
            t, alt0, az0, exposed = end, float(alts[1]), float(azs[1]), True
        return plan

    def _field_transients(self, rows: list[int]) -> list[list[int]]:
        """Transient indices hosted by each field row."""
        return [self._by_field[int(self._field_start[r]):int(self._field_start[r + 1])].tolist() for r in rows]

    def evaluate(self, params: dict[str, Any]) -> SimResult:
        """Observe a batch of b settings in order; params hold ra, dec (deg) or field_id, and optionally exposure (s)."""
        rows, snap = self._rows_of(params)
        b = int(rows.numel())
        if b == 0:
            raise SimulatorError("telescope: empty batch")
        exposures = self._exposures_of(params, b)
        plan = self._plan(rows, exposures)
        mid = torch.tensor([(p["start"] + p["end"]) / 2.0 for p in plan], dtype=torch.float64, device=self.device)
        cond = self.conditions(mid, rows, exposures.to(device=self.device, dtype=self.dtype))
        c64 = {k: v.to(torch.float64).cpu() for k, v in cond.items()}
        dome_open = c64["dome_open"].bool()
        depth = torch.where(dome_open, c64["depth"], torch.zeros(b, dtype=torch.float64))

        members = self._field_transients(rows.tolist())
        width = max((len(m) for m in members), default=0)
        index = torch.zeros(b, width, dtype=torch.long)
        valid = torch.zeros(b, width, dtype=torch.bool)
        for k, m in enumerate(members):
            index[k, :len(m)] = torch.as_tensor(m, dtype=torch.long)
            valid[k, :len(m)] = True
        tr = self.transients
        mid_cpu = mid.cpu().view(-1, 1)
        mags = tr.magnitude(mid_cpu, index) if width else torch.zeros(b, 0, dtype=torch.float64)
        snr = torch.where(valid & dome_open.view(-1, 1), sky.point_source_snr(mags, depth.view(-1, 1)),
                          torch.zeros_like(mags))
        epochs = [Epoch(int(rows[k]), float(mid_cpu[k]), float(depth[k]), bool(dome_open[k]), m,
                        snr[k, :len(m)].tolist()) for k, m in enumerate(members)]
        reward = torch.tensor(self.survey.record(epochs), dtype=torch.float64)
        detected = snr >= 5.0
        meta = [self._metadata(rows[k], p, snap[k], exposures[k], c64, k, [
            {"transient": i, "class": TRANSIENT_CLASSES[int(tr.kind[i])], "magnitude": round(float(mags[k, j]), 3),
             "snr": round(float(snr[k, j]), 3), "detected": bool(detected[k, j])} for j, i in enumerate(members[k])])
            for k, p in enumerate(plan)]
        metrics = {
            "reward": reward, "depth": depth,
            "snr_max": snr.max(dim=1).values if width else torch.zeros(b, dtype=torch.float64),
            "n_detected": detected.sum(dim=1).to(torch.float64),
            "airmass": c64["airmass"], "altitude": c64["altitude"], "seeing": c64["seeing"],
            "sky_brightness": c64["sky_brightness"], "moon_separation": c64["moon_separation"], "cloud": c64["cloud"],
            "duration": torch.tensor([p["duration"] for p in plan], dtype=torch.float64),
            "time": torch.tensor([(p["end"] - self.start_mjd) * 24.0 for p in plan], dtype=torch.float64),
        }
        data = None
        if self.images:
            psf = (c64["seeing"] / 2.3548 / self.pixel_scale).clamp(min=0.3)
            fluxes = torch.where(valid, imaging.flux(mags), torch.zeros_like(mags))
            data = imaging.render(self.static_sky, rows, psf, tr.x[index], tr.y[index], fluxes, depth, dome_open,
                                  self._noise)
        self.clock = plan[-1]["end"]
        self.pointing = (plan[-1]["alt_end"], plan[-1]["az_end"])
        self._exposed = True
        return SimResult(metrics=metrics, data=data, metadata=meta)

    def _metadata(self, row: torch.Tensor, p: dict[str, float], snap: torch.Tensor, exposure: torch.Tensor,
                  c64: dict[str, torch.Tensor], k: int, transients: list[dict[str, Any]]) -> dict[str, Any]:
        """Plain-Python record of one observation for the audit log."""
        row = int(row)
        return {
            "field_id": int(self.fields.field_id[row]), "field_class": str(self.fields.kind[row]),
            "ra": float(self.fields.ra[row]), "dec": float(self.fields.dec[row]), "snap_distance": float(snap),
            "mjd": p["start"], "utc": ephemeris.datetime_from_mjd(p["start"]).isoformat(timespec="seconds"),
            "night": self.calendar.index(p["start"]), "exposure": float(exposure), "slew": p["slew"],
            "overhead": p["overhead"], "dome_open": bool(c64["dome_open"][k]), "band": self.band.name,
            "moon_illumination": float(c64["moon_illumination"][k]), "moon_altitude": float(c64["moon_altitude"][k]),
            "sun_altitude": float(c64["sun_altitude"][k]), "transients": transients,
        }

    # slews and the sequential-decision interface -------------------------------------------------

    def _radec_of(self, setting: dict[str, Any], which: str) -> tuple[float, float]:
        if "ra" in setting and "dec" in setting:
            return float(setting["ra"]), float(setting["dec"])
        if "field_id" in setting:
            row, _ = self._rows_of({"field_id": torch.tensor([float(setting["field_id"])])})
            return float(self.fields.ra[int(row[0])]), float(self.fields.dec[int(row[0])])
        raise SimulatorError(f"move_cost: setting {which} needs ra and dec (deg) or field_id")

    def move_cost(self, a: dict[str, Any], b: dict[str, Any]) -> float:
        """Seconds to slew and settle from pointing a to pointing b at the current clock.

        Returns inf when b is below the altitude limit then (a cost-aware policy can rank it last;
        `evaluate` refuses it with SimulatorError)."""
        t = torch.tensor([self.calendar.fit(self.clock, self.exposure)], dtype=torch.float64)
        coords = torch.tensor([self._radec_of(a, "a"), self._radec_of(b, "b")], dtype=torch.float64)
        ra, dec = ephemeris.spherical(ephemeris.unit_vector(coords[:, 0], coords[:, 1]) @ self._precession.T)
        lst = ephemeris.local_sidereal_time(t, self.site.longitude)
        alt, az = ephemeris.horizontal(lst - ra, dec, self.site.latitude)
        if float(alt[1]) < self.altitude_limit:
            return math.inf
        return float(self.mount.slew_time(alt[0], az[0], alt[1], az[1]))

    def altaz(self, mjd: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(alt, az) in degrees of field rows `rows` (all by default) at times `mjd`, broadcast, on the device."""
        t = torch.as_tensor(mjd, dtype=torch.float64, device=self.device)
        ra = self._ra if rows is None else self._ra[rows.to(self.device)]
        dec = self._dec if rows is None else self._dec[rows.to(self.device)]
        lst = ephemeris.local_sidereal_time(t, self.site.longitude).to(self.dtype)
        return ephemeris.horizontal(lst - ra, dec, self.site.latitude)

    def features_batch(self, mjd: torch.Tensor, morning: torch.Tensor, pointing: tuple[torch.Tensor, torch.Tensor],
                       last_visit: torch.Tensor, n_visits: torch.Tensor, known_active: torch.Tensor) -> torch.Tensor:
        """Features (B, n_fields, len(FEATURES)) of B survey states at once: times `mjd` (B,), the nights' morning
        twilights (B,), pointings (alt, az) (B,), and per field last visit MJD, visit count and active transients (B, n)."""
        t = mjd.to(device=self.device, dtype=torch.float64).view(-1, 1)
        c = self.conditions(t)
        alt0, az0 = (v.to(device=self.device, dtype=self.dtype).view(-1, 1) for v in pointing)
        slew = self.mount.slew_time(alt0, az0, c["altitude"], c["azimuth"])
        since = (t - last_visit.to(device=self.device, dtype=torch.float64)).clamp(max=SINCE_CAP_DAYS)
        night_left = ((morning.to(device=self.device, dtype=torch.float64).view(-1, 1) - t) * 24.0).to(self.dtype)
        cols = {
            **{k: c[k] for k in ("altitude", "airmass", "moon_separation", "sky_brightness", "seeing", "depth",
                                 "cloud", "moon_illumination", "sun_altitude")},
            "hour_angle": c["hour_angle"] / 15.0, "slew_time": slew, "since_visit": since.to(self.dtype),
            "n_visits": n_visits.to(device=self.device, dtype=self.dtype),
            "known_active": known_active.to(device=self.device, dtype=self.dtype),
            "priority": self._priority.expand_as(slew), "observable": c["observable"].to(self.dtype),
            "night_left": night_left.expand_as(slew),
        }
        return torch.stack([cols[k] for k in FEATURES], dim=-1)

    def features(self) -> torch.Tensor:
        """Observation features (n_fields, len(FEATURES)) at the clock, in FEATURES order."""
        t = self.calendar.fit(self.clock, self.exposure)
        one = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
        return self.features_batch(one(t), one(self.night(self.calendar.index(t))[1]),
                                   (one(self.pointing[0]), one(self.pointing[1])), self.survey.last_visit.view(1, -1),
                                   self.survey.n_visits.view(1, -1), self.survey.known_active(t).view(1, -1))[0]

    def action_mask(self) -> torch.Tensor:
        """Bool (n_fields,): fields above the altitude limit for the next exposure (dome state aside)."""
        t = self.calendar.fit(self.clock, self.exposure)
        return self.conditions(t)["altitude"] >= self.altitude_limit

    def step(self, target_index: int) -> tuple[torch.Tensor, float, bool, dict[str, Any]]:
        """Observe catalogue row `target_index` with the default exposure: (features, reward, done, info)."""
        if self.done:
            raise SimulatorError("the survey's last night is over; call reset() to start again")
        row = int(target_index)
        if not 0 <= row < len(self.fields):
            raise SimulatorError(f"target_index must lie in [0, {len(self.fields) - 1}], got {target_index}")
        result = self.evaluate({"field_id": torch.tensor([float(self.fields.field_id[row])])})
        metrics, _, data, meta = result.row(0)
        return self.features(), metrics["reward"], self.done, {"metrics": metrics, "data": data, **meta}

    def wait(self, seconds: float) -> tuple[torch.Tensor, float, bool, dict[str, Any]]:
        """Let the clock run (e.g. while clouds pass): (features, 0.0, done, info)."""
        seconds = _number("seconds", seconds, 0.0, 86400.0 * 366)
        self.clock = self.calendar.fit(self.clock + seconds / 86400.0, self.exposure)
        return self.features(), 0.0, self.done, {"mjd": self.clock}
