"""Data: datasets as tensors, partitions over learners, per-learner sample streams, drift.

``as_dataset`` turns a researcher's own arrays, tensors or ``torch.utils.data.Dataset`` into
the ``Dataset`` that ``netfl.build.build(scenario, dataset=...)`` takes.
"""

from netfl.data.base import DataError, Dataset
from netfl.data.custom import as_dataset
from netfl.data.datasets import DATASETS, load_dataset
from netfl.data.partition import SCHEMES, partition

__all__ = ["DATASETS", "SCHEMES", "DataError", "Dataset", "as_dataset", "load_dataset",
           "partition"]
