"""sessionlen: predict the length of a listener's next Last.fm session (all pipeline logic)."""

__version__ = "0.1.0"
