"""Adder convolution (Chen et al., AdderNet, CVPR 2020)."""
__all__: list = []
