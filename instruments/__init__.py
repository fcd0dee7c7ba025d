"""Instruments: the protocol and adapters (function, command, simulator, recorded data)."""
from instruments.base import Instrument, InstrumentError, InstrumentTimeout, Measurement

__all__ = ["Instrument", "InstrumentError", "InstrumentTimeout", "Measurement"]
