"""Renamed arguments and moved modules keep working for one release, with a FutureWarning that names
the new one."""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import re
import sys
import types
import warnings
from typing import Callable


def renamed_arguments(**old_to_new: str) -> Callable:
    """Decorate a function so each old keyword still works, warning with the new name.

    See :func:`argument_aliases` for names that keep working without a warning.

    Parameters
    ----------
    **old_to_new
        ``old_name="new_name"`` for each renamed keyword argument.

    Returns
    -------
    callable
        The decorator.

    Examples
    --------
    >>> import warnings
    >>> @renamed_arguments(fdr_thresh="fdr_cutoff")
    ... def keep(*, fdr_cutoff=0.05):
    ...     return fdr_cutoff
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     keep(fdr_thresh=0.1), caught[0].category.__name__
    (0.1, 'FutureWarning')
    """

    return _keyword_map(old_to_new, warn=True, attribute="renamed_arguments")


def argument_aliases(**alias_to_name: str) -> Callable:
    """Decorate a function so each alias keyword works as the argument it names, without a warning.

    For functions that are epione's (``pseudobulk_with_fragments``, ``peak_to_gene``,
    ``iterative_lsi``): its tutorial's argument names keep working as its users write them,
    while this package's docs use one name per idea across tl, pl and io.

    Parameters
    ----------
    **alias_to_name
        ``alias="name"`` for each accepted alias.

    Returns
    -------
    callable
        The decorator; the wrapped function lists its aliases in ``argument_aliases``.

    Examples
    --------
    >>> @argument_aliases(cluster_key="groupby")
    ... def tracks(*, groupby):
    ...     return groupby
    >>> tracks(cluster_key="lineage"), tracks.argument_aliases
    ('lineage', {'cluster_key': 'groupby'})
    """
    return _keyword_map(alias_to_name, warn=False, attribute="argument_aliases")


def _keyword_map(old_to_new: dict[str, str], *, warn: bool, attribute: str) -> Callable:
    def decorate(func: Callable) -> Callable:
        warn_once = warnings.warn
        replace, escape = re.sub, re.escape  # the wrapper reads only its closure (see below)
        what = "its old name" if warn else "an alias"

        def wrapper(*args, **kwargs):
            used = {}
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{func.__name__}() got both {old}= and {new}=; pass only {new}= "
                                    f"({old}= is {what}).")
                if warn:
                    warn_once(f"{func.__name__}(): the argument {old}= is renamed {new}=; {old}= will stop "
                              "working in the next release.", FutureWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
                used[new] = old
            if warn or not used:
                return func(*args, **kwargs)
            try:
                return func(*args, **kwargs)
            except (ValueError, KeyError, TypeError, OSError) as err:
                # An error names the argument as the caller wrote it (cluster_key=, not groupby=).
                if err.args and isinstance(err.args[0], str):
                    message = err.args[0]
                    for new, old in used.items():  # whole names only: fragments=, not cache_fragments=
                        message = replace(rf"(?<![\w.]){escape(new)}(?=[=:])", old, message)
                    err.args = (message, *err.args[1:])
                raise

        # The wrapper keeps the wrapped function's module globals (it reads only its closure and
        # builtins), so introspection such as ``f.__globals__`` sees the tool's module.
        wrapper = types.FunctionType(wrapper.__code__, func.__globals__, func.__name__, None, wrapper.__closure__)
        functools.update_wrapper(wrapper, func)
        # Stacked decorators each add their own map (update_wrapper copied the inner one's).
        setattr(wrapper, attribute, {**getattr(func, attribute, {}), **old_to_new})
        return wrapper

    return decorate


class _MovedModule(types.ModuleType):
    """The old path of a moved module: attributes come from the new module, with one warning."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__(old, f"Moved to {new}.")
        self._p2g_new = new

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return getattr(importlib.import_module(self._p2g_new), name)

    def __dir__(self) -> list[str]:
        return dir(importlib.import_module(self._p2g_new))


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of moved modules (``sys.meta_path``); see :func:`moved_modules`."""

    def __init__(self, package: str, moved: dict[str, str]) -> None:
        self.package, self.moved = package, {f"{package}.{old}": new for old, new in moved.items()}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.moved:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        return _MovedModule(spec.name, self.moved[spec.name])

    def exec_module(self, module) -> None:
        new = self.moved[module.__name__]
        warnings.warn(f"the module {module.__name__} moved to {new}; import it from there (or use the public "
                      f"name in {self.package}); the old path will stop working in the next release.",
                      FutureWarning, stacklevel=2)


class _KeepsPublicNames(types.ModuleType):
    """A package whose public functions are not replaced by a moved module of the same name.

    Importing ``p2g_dask.tl.peak_to_gene`` (the old module path) makes Python set the package's
    attribute ``peak_to_gene`` to that module: the function ``p2g.tl.peak_to_gene`` must stay.
    """

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, _MovedModule):
            return
        super().__setattr__(name, value)


def moved_modules(package: str, moved: dict[str, str]) -> None:
    """Keep the old module paths of ``package`` importable for one release, with a FutureWarning.

    Parameters
    ----------
    package
        The package the modules were in, e.g. ``"p2g_dask.tl"``.
    moved
        ``old submodule name -> new full module path``.

    Examples
    --------
    >>> import warnings, p2g_dask.tl
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     from p2g_dask.tl.aggregate import membership_sums
    >>> membership_sums.__module__, caught[0].category.__name__
    ('p2g_dask.tl.engine.accumulate', 'FutureWarning')
    """
    if not any(isinstance(f, _MovedModuleFinder) and f.package == package for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder(package, moved))
    sys.modules[package].__class__ = _KeepsPublicNames
