"""Evaluation: clean and robust accuracy of the primary classifier."""

from engine.evaluation.robust import AttackSpec, accuracy, parse_attack

__all__ = ["AttackSpec", "accuracy", "parse_attack"]
