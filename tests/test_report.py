"""`aec report`: one self-contained page, regenerated from the store each time, for a campaign and a replay;
rendered in headless Chromium to check that the figures show."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from controller.cli import main

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (Debian package 'chromium') is not installed")

# matplotlib's first colours: plotted data, never used by the page's own styling
PLOT_COLOURS = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40]])


def _pool_campaign(tmp_path: Path, trials: int, **extra) -> Path:
    rng = np.random.default_rng(4)
    X = rng.random((150, 2))
    lines = ["x0,x1,y"] + [f"{a},{b},{(a - 0.3) ** 2 + (b - 0.6) ** 2}" for a, b in X]
    (tmp_path / "pool.csv").write_text("\n".join(lines) + "\n")
    camp = {"name": "scan", "seed": 1, "space": {"pool": {"file": "pool.csv", "columns": ["x0", "x1"]}},
            "objectives": [{"metric": "y"}], "instrument": {"kind": "recorded", "file": "pool.csv", "metrics": ["y"]},
            "policy": {"kind": "botorch", "initial": 4}, "budget": {"trials": trials},
            "store": str(tmp_path / "scan.db"), **extra}
    path = tmp_path / "scan.yaml"
    path.write_text(yaml.safe_dump(camp))
    return path


def test_campaign_report_after_resume_shows_the_new_trial_count(tmp_path):
    assert main(["run", str(_pool_campaign(tmp_path, 8)), "--quiet"]) == 0
    assert main(["report", str(tmp_path / "scan.db"), "--quiet"]) == 0
    page = tmp_path / "scan.db.report" / "index.html"
    assert "8 completed" in page.read_text() and "<td>trial budget</td><td>8</td>" in page.read_text()
    assert main(["resume", str(tmp_path / "scan.db"), "--trials", "12", "--quiet"]) == 0
    assert main(["report", str(tmp_path / "scan.db"), "--quiet"]) == 0
    text = page.read_text()
    assert "12 completed" in text and "<td>trial budget</td><td>12</td>" in text and "8 completed" not in text
    assert "http://" not in text and "https://" not in text and "<script" not in text  # offline, self-contained
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 2  # convergence, scan map with the model
    assert "standard deviation over the pool" in text
    assert {p.name for p in (tmp_path / "scan.db.report").glob("*.png")} == {"convergence.png", "scan.png"}


def _screenshot(page: Path, png: Path, height: int = 2400) -> np.ndarray:
    from matplotlib.image import imread

    subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size=1400,{height}", f"--screenshot={png}", page.resolve().as_uri()],
                   capture_output=True, timeout=90, check=True)
    return (imread(str(png))[..., :3] * 255).round().astype(int)


def _plot_pixels(img: np.ndarray) -> int:
    """Pixels within a small distance of matplotlib's first four colours: drawn data."""
    d = np.abs(img[:, :, None, :] - PLOT_COLOURS[None, None]).sum(axis=-1)
    return int((d.min(axis=-1) < 30).sum())


@needs_chromium
def test_replay_and_campaign_reports_render_their_figures_in_chromium(tmp_path):
    rng = np.random.default_rng(8)
    X = rng.random((90, 3))
    lines = ["a,b,c,y"] + [f"{a},{b},{c},{np.sin(4 * a) + (b - c) ** 2}" for a, b, c in X]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "r"
    assert main(["replay", "--data", str(tmp_path / "d.csv"), "--inputs", "a,b,c", "--objective", "y",
                 "--policies", "random,sobol,botorch", "--seeds", "2", "--budget", "10", "--out", str(out),
                 "--quiet"]) == 0
    assert main(["report", str(out), "--quiet"]) == 0
    text = (out / "index.html").read_text()
    assert text.count('<img src="data:image/png;base64,') == 4  # Top%+EF, AF, best so far, regret
    assert "EF at budget" in text and "AF at Top% 0.5" in text
    img = _screenshot(out / "index.html", tmp_path / "replay.png")
    assert img.std() > 20, "the screenshot is blank"
    assert _plot_pixels(img) > 5000, "the figures do not show"

    run_store = next((out / "runs").glob("d.botorch.s0.db"))
    assert main(["report", str(run_store), "--quiet"]) == 0
    img = _screenshot(run_store.with_name(run_store.name + ".report") / "index.html", tmp_path / "campaign.png", 1600)
    assert img.std() > 20 and _plot_pixels(img) > 1000


def test_novelty_over_time_is_drawn_and_the_selection_can_be_replayed(workdir, write_campaign, monkeypatch, capsys):
    monkeypatch.setenv("AEC_TEST_SLEEP", "0")
    selection = {"kind": "autoencoder", "warmup": 8, "epochs": 20, "patience": 5, "retrain_every": 0, "device": "cpu",
                 "keep_fraction": 0.5}
    cfg = write_campaign("nov", target="fns:slow_spectrum", trials=24, policy={"kind": "random"}, selection=selection)
    assert main(["run", str(cfg), "--quiet"]) == 0
    assert main(["report", str(workdir / "nov.db"), "--quiet"]) == 0
    text = (workdir / "nov.db.report" / "index.html").read_text()
    assert "novelty score per measurement, kept or dropped" in text and "data products kept" in text
    assert (workdir / "nov.db.report" / "novelty.png").is_file()
    capsys.readouterr()
    assert main(["replay", "--store", str(workdir / "nov.db"), "--keep-fractions", "0.1,0.5", "--out",
                 str(workdir / "sel"), "--json"]) == 0
    import json

    (res,) = json.loads(capsys.readouterr().out)
    assert res["scored"] == 16  # measured after the warm-up
    kept = {r["keep_fraction"]: r["kept"] for r in res["alternatives"]}
    assert kept[0.1] <= 1 and kept[0.1] <= kept[0.5] <= 8  # floor(fraction * 16): the budget is never exceeded
    assert res["sample_rate"] == 0.02 and "sample_rate 0.02 is honoured" in res["notes"][0]  # the selector's default


def test_the_model_map_and_trial_table_are_capped_and_say_so(tmp_path, monkeypatch):
    from controller import report

    assert main(["run", str(_pool_campaign(tmp_path, 8)), "--quiet"]) == 0
    monkeypatch.setattr(report, "GP_POINTS", 5)
    monkeypatch.setattr(report, "TABLE_ROWS", 3)
    fitted = []
    real = report.pool_model

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        fitted.append(out["fitted_on"])
        return out

    monkeypatch.setattr(report, "pool_model", spy)
    assert main(["report", str(tmp_path / "scan.db"), "--quiet"]) == 0
    text = (tmp_path / "scan.db.report" / "index.html").read_text()
    assert fitted == [5] and "GP fitted on 5 of the 8 measurements" in text
    assert "the latest 3 of 8 trials" in text and "<h2>trials (8)</h2>" in text
    table = text[text.index("<h2>trials (8)</h2>"):]
    assert table.count("<tr>") == 4  # the header and 3 trials


def test_the_no_model_caption_gives_the_real_reason(tmp_path):
    assert main(["run", str(_pool_campaign(tmp_path, 5)), "--quiet"]) == 0
    (tmp_path / "pool.csv").unlink()  # the pool table is not readable here any more
    assert main(["report", str(tmp_path / "scan.db"), "--quiet"]) == 0
    text = (tmp_path / "scan.db.report" / "index.html").read_text()
    caption = re.search(r"<figcaption>(measured map[^<]*)</figcaption>", text).group(1)
    assert "no model map: the pool table cannot be read here: " in caption and "pool.csv" in caption, caption
