"""Renamed arguments keep working for one release, with a FutureWarning that names the new one."""

from __future__ import annotations

import functools
import types
import warnings
from typing import Callable


def renamed_arguments(**old_to_new: str) -> Callable:
    """Decorate a function so each old keyword still works, warning with the new name.

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

    def decorate(func: Callable) -> Callable:
        warn = warnings.warn

        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{func.__name__}() got both {old}= and {new}=; pass only {new}= "
                                    f"({old}= is its old name).")
                warn(f"{func.__name__}(): the argument {old}= is renamed {new}=; {old}= will stop "
                     "working in the next release.", FutureWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        # The wrapper keeps the wrapped function's module globals (it reads only its closure and
        # builtins), so introspection such as ``f.__globals__`` sees the tool's module.
        wrapper = types.FunctionType(wrapper.__code__, func.__globals__, func.__name__, None, wrapper.__closure__)
        functools.update_wrapper(wrapper, func)
        wrapper.renamed_arguments = dict(old_to_new)  # type: ignore[attr-defined]
        return wrapper

    return decorate
