"""What a resumed run may change, and what it may not.

`--resume` continues the run its checkpoint describes. Settings that only say how or how long
it runs can change between sessions; anything that defines what is trained (data, model,
method, attack, schedule shape, batch sizes, the seed of the data order) cannot, because the
checkpoint's weights, optimiser state, omega and loader position were produced under them. A
refused change is listed key by key, before anything is loaded into the model or written.
"""

from __future__ import annotations

from engine.config import ConfigError, TrainConfig, flatten, resumable_keys

# The fields marked `resumable` in engine/config.py: `optim.epochs` extends (or ends) a run; the
# runtime decides where and how fast it runs, not what it computes (runtime.seed excepted: it
# orders the data); the loader backend and its workers read the same samples in the same order;
# TensorBoard only mirrors the records; eval.every and eval.batch_size change neither the
# training nor what model selection measures.
SAFE_TO_CHANGE = resumable_keys()


DEFAULT_REMEDY = "Drop those flags, or start a new run (another --out, or --overwrite)."


def changes_on_resume(saved: dict, requested: dict, where: str, remedy: str = DEFAULT_REMEDY) -> dict[str, list]:
    """{key: [saved, requested]} for every setting that differs between the checkpoint's config
    and the requested one (saved None: a setting the checkpoint predates); a ConfigError naming
    `where`, every unsafe key and `remedy` when any that the checkpoint holds differs and
    `SAFE_TO_CHANGE` does not allow it."""
    before, after = flatten(saved), flatten(requested)
    changed = {k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after))
               if before.get(k) != after.get(k)}
    # A key the checkpoint lacks is a setting a later engine version added, whose default is what
    # the engine did before it: the run takes the setting at that default (recorded with the other
    # changes); another value would change what the run trains (or its weights' layout).
    defaults = flatten(TrainConfig().to_dict())
    refused = {k: v for k, v in changed.items() if k not in SAFE_TO_CHANGE
               and (k in before or v[1] != defaults.get(k, v[1]))}
    if refused:
        listed = "; ".join(f"{k}: {old!r} in the checkpoint, {new!r} now" if k in before else
                           f"{k}: the checkpoint predates it (trained as {defaults[k]!r}), {new!r} now"
                           for k, (old, new) in refused.items())
        raise ConfigError(
            f"--resume of {where} would change what the run trains ({listed}). {remedy} "
            f"A resume may change only: {', '.join(sorted(SAFE_TO_CHANGE))}"
        )
    return changed
