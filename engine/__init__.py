"""showmanylabels engine: data, models, attacks, protocol, runtime and reports.

Nothing here imports ``cli`` or ``bench``.
"""

__version__ = "0.1.0"
