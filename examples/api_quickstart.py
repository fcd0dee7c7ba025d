"""The Python API: run the quickstart campaign from code, then resume it with a larger budget.

Run from the project root: python examples/api_quickstart.py
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from controller import Campaign, load_config


def main() -> None:
    here = Path(__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "api-demo.db"
        config = load_config(here / "quickstart.yaml", {"seed": 3, "budget.trials": 12})
        campaign = Campaign(config, store=store)
        summary = campaign.run()
        campaign.close()
        print(f"{summary.completed} trials, best y = {summary.best['metrics']['y']:.4f} at {summary.best['params']}")

        resumed = Campaign.resume(store, trials=20)
        summary = resumed.run()
        for trial in resumed.store.trials()[-3:]:
            print(trial.id, trial.status, {k: round(v, 3) for k, v in trial.params.items()}, trial.metrics)
        resumed.close()
        print(f"after resume: {summary.completed} trials, best y = {summary.best['metrics']['y']:.4f}")


if __name__ == "__main__":
    main()
