"""A clean, publication-style matplotlib style for the p2g plots."""

from __future__ import annotations

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


def plot_set(*, fontsize: float = 9.0, dpi: int = 100, savefig_dpi: int = 200, font: str = "DejaVu Sans") -> None:
    """Apply a clean, publication-style matplotlib style (global ``rcParams``).

    Sans-serif text at ``fontsize`` (ticks and legends one point smaller), no top/right spines,
    no grid, frameless legends, tight white-background saves at ``savefig_dpi``, editable text
    in PDF/SVG. Logs one line; prints nothing. Use :func:`style_params` with
    ``matplotlib.rc_context`` to apply it to one block only.

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

    if fontsize <= 0:
        raise ValueError(f"fontsize={fontsize!r} must be a positive number of points, e.g. 9.")
    matplotlib.rcParams.update(style_params(fontsize=fontsize, dpi=dpi, savefig_dpi=savefig_dpi, font=font))
    logger.info("plot_set: publication style applied (font %s %gpt, savefig %d dpi)", font, fontsize, savefig_dpi)
