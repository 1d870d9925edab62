"""The registry of sparse-training methods.

Every module in this package defines one method and registers it with ``@register``; importing the
package imports them all, so adding a method is adding a file.
"""

import importlib
import pkgutil

from evosparse.methods.base import DEFAULTS, METHODS, Method, Param, get_method, register, resolve_params

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DEFAULTS", "METHODS", "Method", "Param", "get_method", "register", "resolve_params"]
