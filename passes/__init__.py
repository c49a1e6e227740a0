"""Built-in pass library of graphopt (installed as graphopt.passes).

One pass (or pass family) per module; the file name is the snake_case of the kebab-case pass
name. Importing this package registers every pass; add new modules to the import list below.
"""

from . import canonicalize, cse, dce, fold_constants  # noqa: F401  (registers the passes)
