"""Loader backends: each turns one dataset into an `ImageStream` of device batches.

`resident` keeps the whole dataset on the device; `ffcv` and `dali` read .beton files or
arrays through those libraries, imported lazily.
"""
