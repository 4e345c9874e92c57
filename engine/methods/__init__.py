"""Training objectives: one function per method, `(model, batch, state, ctx) -> (loss, stats)`."""

from engine.methods.at import at_step
from engine.methods.context import MethodState, StepContext, StepStats
from engine.methods.trades import trades_step

METHODS = {"at": at_step, "trades": trades_step}

__all__ = ["METHODS", "MethodState", "StepContext", "StepStats", "at_step", "trades_step"]
