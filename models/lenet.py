"""LeNet-5 (LeCun et al. 1998) in its common modern reading.

32x32 grayscale input; C1 6@5x5, S2 2x2 average pool, C3 16@5x5 (fully
connected to S2, not the paper's sparse table), S4, F5 120, F6 84, output 10;
tanh activations.  61,706 parameters, 416,520 multiply-accumulates.
"""
from __future__ import annotations

from models.layers import Net


def lenet5(seed: int = 0, num_classes: int = 10, state_dict=None) -> Net:
    net = Net("LeNet-5", ["N", 1, 32, 32], seed=seed, state_dict=state_dict)
    x = net.conv_act(net.input, 6, 5, "conv1", padding=0, act="tanh")
    x = net.avg_pool(x, 2, 2)
    x = net.conv_act(x, 16, 5, "conv2", padding=0, act="tanh")
    x = net.builder.flatten(net.avg_pool(x, 2, 2))
    x = net.activation(net.linear(x, 120, "fc1"), "tanh")
    x = net.activation(net.linear(x, 84, "fc2"), "tanh")
    net.output(net.linear(x, num_classes, "fc3"))
    return net
