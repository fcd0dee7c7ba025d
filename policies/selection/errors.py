"""The one error type of data selection."""


class SelectionError(ValueError):
    """Data the novelty selector cannot use: wrong shape, too few or no known measurements."""
