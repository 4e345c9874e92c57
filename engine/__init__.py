"""The training engine: models, attacks, methods, trainer, checkpoints, evaluation, config.

Dependencies point one way: `engine` uses `loaders` and `kernels`, never `cli`.
"""
