"""The registry of sparse-training methods; importing this package registers them all."""

from evosparse.methods import dense, static  # noqa: F401  (imported to register)
from evosparse.methods import set as set_method  # noqa: F401
from evosparse.methods.base import METHODS, Method, Param, get_method, register, resolve_params

__all__ = ["METHODS", "Method", "Param", "get_method", "register", "resolve_params"]
