"""Data side of the engine: dataset sources, the .beton writer and the loader backends.

`loaders` never imports `engine` or `cli`: it hands the trainer `Batch`es and nothing else.
"""

from loaders.types import ArrayDataset, Batch, DatasetInfo
from loaders.options import LoaderOptions
from loaders.stream import ImageStream, PairedStream

__all__ = ["ArrayDataset", "Batch", "DatasetInfo", "ImageStream", "LoaderOptions", "PairedStream"]
