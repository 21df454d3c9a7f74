"""Entry points for `python -m jobs.train` / `python -m jobs.sweep`, locally or via `ray job submit`."""
