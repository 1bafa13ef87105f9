"""Helpers that are not part of a model: operator handles for fvcore's model analysis."""
