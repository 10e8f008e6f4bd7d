"""Pruning methods as pure functions: scores, masks, shapes. No Lightning here."""
