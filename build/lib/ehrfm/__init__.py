"""ehrfm: EHR foundation-model toolkit."""

__version__ = "0.1.0"
