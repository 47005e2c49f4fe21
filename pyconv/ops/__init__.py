"""The functional API: NCHW float32 NumPy arrays in and out, PyTorch argument
names and semantics.  One module per op family; each registers its ops in
:mod:`pyconv.registry` when imported."""
from pyconv.ops.conv import *  # noqa: F401,F403
from pyconv.ops.pool import *  # noqa: F401,F403
from pyconv.ops.activation import *  # noqa: F401,F403
from pyconv.ops.norm import *  # noqa: F401,F403
from pyconv.ops.tensor import *  # noqa: F401,F403
from pyconv.ops.shift import *  # noqa: F401,F403
from pyconv.ops.adder import *  # noqa: F401,F403
