"""A clean, publication-style matplotlib style for the p2g plots: as a context
(:func:`plot_style`, what the pipeline and the CLI use) or applied globally (:func:`plot_set`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from p2g_dask._logging import logger


def style_params(*, fontsize: float = 9.0, dpi: int = 100, savefig_dpi: int = 200,
                 font: str = "DejaVu Sans") -> dict:
    """The rcParams that :func:`plot_set` applies (for ``matplotlib.rc_context``).

    Examples
    --------
    >>> style_params(fontsize=8)["font.size"]
    8
    """
    small = fontsize - 1
    return {
        "font.family": "sans-serif",
        "font.sans-serif": [font, "DejaVu Sans", "Arial", "Helvetica"],
        "font.size": fontsize,
        "axes.titlesize": fontsize + 1,
        "axes.labelsize": fontsize,
        "xtick.labelsize": small,
        "ytick.labelsize": small,
        "legend.fontsize": small,
        "legend.frameon": False,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.linewidth": 0.8,
        "axes.grid": False,
        "xtick.major.width": 0.8,
        "ytick.major.width": 0.8,
        "xtick.direction": "out",
        "ytick.direction": "out",
        "figure.dpi": dpi,
        "savefig.dpi": savefig_dpi,
        "savefig.bbox": "tight",
        "savefig.facecolor": "white",
        "image.interpolation": "nearest",
        # Type 42 keeps text editable in PDF/PS for journals' figure editors.
        "pdf.fonttype": 42,
        "ps.fonttype": 42,
        "svg.fonttype": "none",
    }


def _check_fontsize(fontsize: float) -> None:
    if fontsize <= 0:
        raise ValueError(f"fontsize={fontsize!r} must be a positive number of points, e.g. 9.")


@contextlib.contextmanager
def plot_style(*, fontsize: float = 9.0, dpi: int = 100, savefig_dpi: int = 200,
               font: str = "DejaVu Sans") -> Iterator[None]:
    """The style of :func:`plot_set` inside a ``with`` block only (``matplotlib.rc_context``).

    Draw and save the figures inside the block: ``savefig.*`` settings are read when saving.
    Global ``rcParams`` are the same after the block as before it.

    Parameters
    ----------
    fontsize, dpi, savefig_dpi, font
        As for :func:`plot_set`.

    Examples
    --------
    >>> import matplotlib
    >>> before = matplotlib.rcParams["font.size"]
    >>> with plot_style(fontsize=7):
    ...     matplotlib.rcParams["font.size"]
    7.0
    >>> matplotlib.rcParams["font.size"] == before
    True
    """
    import matplotlib

    _check_fontsize(fontsize)
    with matplotlib.rc_context(style_params(fontsize=fontsize, dpi=dpi, savefig_dpi=savefig_dpi, font=font)):
        yield


def plot_set(*, fontsize: float = 9.0, dpi: int = 100, savefig_dpi: int = 200, font: str = "DejaVu Sans") -> None:
    """Apply a clean, publication-style matplotlib style (global ``rcParams``).

    Sans-serif text at ``fontsize`` (ticks and legends one point smaller), no top/right spines,
    no grid, frameless legends, tight white-background saves at ``savefig_dpi``, editable text
    in PDF/SVG. Logs one line; prints nothing. Use :func:`plot_style` to apply it to one block
    only (the pipeline and the CLI do; they never change global ``rcParams``).

    Parameters
    ----------
    fontsize
        Base font size in points.
    dpi, savefig_dpi
        Resolution on screen and of saved figures.
    font
        Preferred sans-serif font (falls back to DejaVu Sans, which matplotlib ships).

    Examples
    --------
    >>> import matplotlib
    >>> plot_set(fontsize=8)
    >>> matplotlib.rcParams["axes.spines.top"], matplotlib.rcParams["font.size"]
    (False, 8.0)
    >>> matplotlib.rcdefaults()
    """
    import matplotlib

    _check_fontsize(fontsize)
    matplotlib.rcParams.update(style_params(fontsize=fontsize, dpi=dpi, savefig_dpi=savefig_dpi, font=font))
    logger.info("plot_set: publication style applied (font %s %gpt, savefig %d dpi)", font, fontsize, savefig_dpi)
