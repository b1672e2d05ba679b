"""One exception base for the domain core.

Bad *input* is never an exception here: normalization returns a ``Rejected`` value.
These exceptions signal misuse or bugs and are meant to crash loudly.
"""


class StreamsError(Exception):
    """Base of every exception raised by ``streams``."""


class StateCorrupt(StreamsError):
    """A stored message state could not be decoded."""


class ConfigError(StreamsError):
    """A domain configuration value (SLA, window size, key) is invalid."""
