"""Model graphs: the .npz file format, the builder, validation, optimization passes,
memory planning and the executor (``pyconv.load`` / ``pyconv.Model``)."""
from pyconv.graph.format import FORMAT_VERSION, Graph, Node, OutputInfo, TensorInfo, read_graph, save_graph
from pyconv.graph.validate import ModelWarning, validate

__all__ = ["FORMAT_VERSION", "Graph", "Node", "OutputInfo", "TensorInfo", "read_graph", "save_graph",
           "ModelWarning", "validate"]
