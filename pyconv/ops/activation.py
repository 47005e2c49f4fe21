"""Activations and softmax."""
__all__: list = []
