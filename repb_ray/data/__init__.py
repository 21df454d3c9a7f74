"""Train and test data on Ray Data: id-block sources (in memory or Parquet), the pruned epoch
pipeline bound to a coordinator's plan, and Parquet preparation with dense ids."""


def from_numpy(columns: dict, **kwargs):
    from repb_ray.data.sources import from_numpy as f
    return f(columns, **kwargs)


def read_parquet(path, **kwargs):
    from repb_ray.data.sources import read_parquet as f
    return f(path, **kwargs)


def prepare_dataset(ds, out_dir: str, **kwargs):
    from repb_ray.data.prepare import prepare_dataset as f
    return f(ds, out_dir, **kwargs)


def prepare_arrays(columns: dict, out_dir: str, **kwargs):
    from repb_ray.data.prepare import prepare_arrays as f
    return f(columns, out_dir, **kwargs)


__all__ = ["from_numpy", "read_parquet", "prepare_dataset", "prepare_arrays"]
