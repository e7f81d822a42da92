"""Synthetic data with planted ground truth (two generator laws), its calibration, and the
loopback fake Last.fm API. Imports `utils.core`, `utils.data_processing` and `utils.baseline`."""
