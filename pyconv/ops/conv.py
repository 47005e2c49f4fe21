"""Convolutions: conv2d (Winograd, 1x1, depthwise, im2col), conv1d, conv_transpose2d."""
__all__: list = []
