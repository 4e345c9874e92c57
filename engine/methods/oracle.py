"""The oracle gate (`method.aux_mode = "oracle"`, beyond the paper, synthetic data only).

BiaMAT routes an auxiliary sample high when the primary head is confident on it, as a stand-in
for "this sample resembles the primary classes". The built-in `shapes` generator knows the
answer: its auxiliary manifest records, per class, whether it is related to the primary classes
(`DatasetInfo.related`). Routing by that record, related high and unrelated low, bounds what
any confidence gate could gain on that data; data without such a record is refused at start.
"""

from __future__ import annotations

from typing import Sequence

import torch

from engine.config import ConfigError


def oracle_high(related: Sequence[torch.Tensor], y_aux: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """(Ba,) bool: True where the sample's class is recorded as related, per auxiliary dataset
    (`related[i]` (classes_i,) bool, `y_aux` split by `sizes`)."""
    if len(related) != len(sizes):
        raise ValueError(f"aux_mode oracle: {len(sizes)} auxiliary datasets in the batch, related-class "
                         f"records for {len(related)}")
    parts = [r[y] for r, y in zip(related, y_aux.split(list(sizes)))]
    return torch.cat(parts) if parts else y_aux.new_zeros(0, dtype=torch.bool)


def related_masks(aux_names: Sequence[str], aux_related: Sequence[Sequence[bool] | None],
                  device: torch.device) -> list[torch.Tensor]:
    """The per-class related flags of every auxiliary dataset as device tensors; a ConfigError
    naming the first dataset whose data records none."""
    masks = []
    for name, related in zip(aux_names, aux_related):
        if related is None:
            raise ConfigError(
                f'method.aux_mode = "oracle" routes by the related classes the data records, and the auxiliary '
                f"data {name!r} records none (only the built-in shapes:aux generator does): use it with "
                "shapes:aux data, or another aux_mode such as biamat"
            )
        masks.append(torch.tensor([bool(r) for r in related], dtype=torch.bool, device=device))
    return masks
