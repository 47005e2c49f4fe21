"""Pooling: max, average, LP, global, adaptive, spatial pyramid, SPPF, RoI."""
__all__: list = []
