"""Ray Tune sweeps over config fields, with MLflow parent/child runs and a Pareto report."""
