"""Tasks used by the tests (importable by the test session's Ray workers through PYTHONPATH)."""

import os
import uuid

import numpy as np
from parquet_images import ParquetImages


class LoggingImages(ParquetImages):
    """ParquetImages that records which ids (and epoch) each preprocess call decodes."""

    def __init__(self, log_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.log_dir = log_dir

    def preprocess(self, batch):
        np.savez(os.path.join(self.log_dir, uuid.uuid4().hex), ids=batch["id"], epoch=batch["epoch"])
        return super().preprocess(batch)
