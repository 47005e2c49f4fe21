"""Normalisation: batch norm (inference) and its folding into convolutions, local response norm."""
__all__: list = []
