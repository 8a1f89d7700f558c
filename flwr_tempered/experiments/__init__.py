"""Experiment presets, result files, plots and the ``flwr-tempered`` command line."""
