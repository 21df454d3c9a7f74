"""Experiment tracking: MLflow runs for training jobs and sweeps, or nothing."""
