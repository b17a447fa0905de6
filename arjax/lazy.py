"""Modules imported on first attribute access, for the modules config files load.

A config file builds its ``method`` section from the method's dataclass
(``arjax.experiment.presets.method_config``), so the method modules are imported whenever a config
is: by ``arjax-train --config.method.betta=1`` as much as by a run. ``import jax`` takes
1-5 s on a 2-core machine, and a mistyped field must answer before that. The method
modules therefore name the numerical modules their losses use through
:func:`lazy_module`, which imports them when a loss first runs (always inside the
training host, where jax is loaded anyway)::

    jnp = lazy_module("jax.numpy")
    ...
    def loss(self, ...):
        return jnp.mean(...)      # imports jax.numpy on first use

The same idea as SPEC 1's ``lazy_loader`` (scientific-python), in the few lines needed
here: attribute access on the returned object imports the module and delegates.
"""

import importlib
import types


class _LazyModule(types.ModuleType):
    """A stand-in for a module that imports it on the first attribute access."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_lazy_target"] = None

    def _load(self) -> types.ModuleType:
        target = self.__dict__["_lazy_target"]
        if target is None:
            target = importlib.import_module(self.__name__)
            self.__dict__["_lazy_target"] = target
        return target

    def __getattr__(self, attr: str):
        return getattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())


def lazy_module(name: str) -> types.ModuleType:
    """The module ``name``, imported on the first attribute access (``name`` is not checked)."""
    return _LazyModule(name)
