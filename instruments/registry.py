"""Build an instrument from the campaign file's `instrument:` section (as plain data, so Ray workers can too)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from instruments.base import Instrument, InstrumentError


def build_instrument(spec: dict[str, Any], base_dir: str | Path, seed: int = 0,
                     parameter_names: list[str] | None = None) -> Instrument:
    """An instrument instance for `spec` ({'kind': 'function', 'target': ...} etc.)."""
    kind = spec.get("kind")
    if kind == "function":
        from instruments.function import FunctionInstrument

        return FunctionInstrument(spec["target"], base_dir=base_dir, options=spec.get("options"))
    if kind == "command":
        from instruments.function import CommandInstrument

        return CommandInstrument(spec["argv"], cwd=spec.get("cwd"), env=spec.get("env"), base_dir=base_dir)
    if kind == "simulator":
        from instruments.simulated import SimulatedInstrument

        return SimulatedInstrument(spec["name"], spec.get("options"), seed=seed)
    if kind == "recorded":
        from instruments.recorded import RecordedInstrument

        return RecordedInstrument(spec["file"], parameter_names or [], spec.get("metrics"), base_dir=base_dir)
    if kind == "epics":
        from instruments.epics import EpicsInstrument

        return EpicsInstrument(**{k: v for k, v in spec.items() if k != "kind"})
    if kind == "ophyd":
        from instruments.ophyd import OphydInstrument

        return OphydInstrument(spec, base_dir=base_dir, parameter_names=parameter_names)
    raise InstrumentError(f"instrument.kind: unknown kind {kind!r}", retryable=False)
