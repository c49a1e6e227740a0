"""ATen -> graphopt IR converters, one module per op family. Importing registers them."""

from graphopt.frontend.aten import elementwise, nn, reductions, shape  # noqa: F401
