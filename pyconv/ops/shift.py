"""Shift convolution (Wu et al., CVPR 2018) and fused shift + 1x1."""
__all__: list = []
