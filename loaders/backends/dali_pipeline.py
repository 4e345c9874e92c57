"""The DALI graph of the loader: external source -> pad + crop -> mirror -> float [0, 1], HWC.

NVIDIA DALI is an optional dependency; it is imported here, when a pipeline is first needed.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

INSTALL_HINT = "pip install 'biamat-engine[dali]'"


def import_dali() -> SimpleNamespace:
    """The DALI modules the loader uses, or an ImportError that says how to install them."""
    try:
        import nvidia.dali as dali
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali.plugin.pytorch import feed_ndarray
    except ImportError as error:
        raise ImportError(
            f"the DALI loader (--loader dali) needs NVIDIA DALI, which could not be imported "
            f"({error}); install it with: {INSTALL_HINT}"
        ) from error
    return SimpleNamespace(Pipeline=dali.Pipeline, fn=fn, types=types, feed_ndarray=feed_ndarray)


def build_pipeline(
    source: Callable,
    *,
    batch_size: int,
    height: int,
    width: int,
    augment: bool,
    device_id: int | None,
    num_threads: int,
    prefetch_queue_depth: int,
):
    """A built pipeline whose single output is a batch of (H, W, 3) float32 images in [0, 1].

    `source(batch_info)` is called once per iteration and returns, for `augment`, the tuple
    (images (b, H, W, 3) uint8, crop starts (b, 2) int32 (row, column) in [-pad, pad],
    flips (b,) int32),
    else just the images; it raises StopIteration past the last batch. The batch length b may
    be below `batch_size` (a short final batch). With `device_id` set, the images are copied to
    that GPU once, as uint8, and every operator after the source runs there.
    """
    dali = import_dali()
    fn, types = dali.fn, dali.types
    pipe = dali.Pipeline(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        prefetch_queue_depth=prefetch_queue_depth,
    )
    with pipe:
        # Batch mode, in-process: gathering a batch from host memory is one fancy-index copy,
        # cheaper than shipping it from parallel worker processes through shared memory, and
        # the callback then shares the stream's state without pickling it. DALI still overlaps
        # its operators with training through the prefetch queue.
        if augment:
            images, starts, flips = fn.external_source(
                source=source, num_outputs=3, batch=True, batch_info=True,
                layout=["HWC", "", ""], dtype=[types.UINT8, types.INT32, types.INT32],
            )
        else:
            images = fn.external_source(
                source=source, batch=True, batch_info=True, layout="HWC", dtype=types.UINT8,
            )
        if device_id is not None:
            images = images.gpu()  # uint8 over PCIe: a quarter of the float32 bytes
        mirror = 0
        if augment:
            # Zero padding and the random crop are one slice: a window of the original size
            # starting up to `pad` pixels outside the image, the outside filled with 0.
            images = fn.slice(
                images, start=starts, shape=[height, width], axes=[0, 1],
                out_of_bounds_policy="pad", fill_values=0,
            )
            mirror = flips
        # HWC output: a (B, H, W, 3) buffer is exactly the memory of a channels_last NCHW tensor.
        images = fn.crop_mirror_normalize(
            images, mirror=mirror, mean=0.0, std=255.0, dtype=types.FLOAT, output_layout="HWC",
        )
        pipe.set_outputs(images)
    pipe.build()
    return pipe
