"""Training objectives: one function per method, `(model, batch, state, ctx) -> (loss, stats)`."""

from engine.methods.at import at_step
from engine.methods.context import MethodState, StepContext, StepStats
from engine.methods.standard import standard_step
from engine.methods.trades import trades_step

METHODS = {"at": at_step, "trades": trades_step, "standard": standard_step}

__all__ = ["METHODS", "MethodState", "StepContext", "StepStats", "at_step", "standard_step", "trades_step"]
