"""The engine-neutral core every stage builds on: configuration and parameters, column names,
errors, stage outputs and manifests, WORK locks, results files, metrics, plotting, the Spark
session. Imports nothing else from `utils`."""
