"""matplotlib, the `plot` extra: imported on demand, with one message naming the extra when absent."""

from __future__ import annotations

from typing import Any

from ..errors import NotInstalledError

PLOT_EXTRA = "pip install 'sr-deploy[plot]'"


def pyplot(what: str = "the plot") -> Any:
    """`matplotlib.pyplot` on the Agg backend (files only, no display). When matplotlib is absent,
    NotInstalledError (exit 2): "`what` needs matplotlib: pip install 'sr-deploy[plot]'". A command
    calls this before its work, so that a missing extra is not found after minutes of it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise NotInstalledError(f"{what} needs matplotlib: {PLOT_EXTRA}") from exc
    return plt
