"""Pictures of meta-learned INRs: reconstructions next to originals, the pruned context at chosen adaptation
steps (the paper's Figure 1) and PSNR against adaptation step.

Every ``plot_*`` function draws one figure with matplotlib's object-oriented API (no pyplot state, no
backend switch), writes it to ``path`` as a PNG and returns the path. matplotlib is imported only when a plot
is drawn; without it they raise ``ImportError`` naming ``pip install 'ecop-wrap[examples]'``. This package
draws only: the data of Figure 1 comes from :func:`ecop_wrap.trace_selection`, which needs only torch.

Inputs are grid-shaped arrays, numpy or torch (any device, detached here): images ``[N, H, W, D]``, video
frames as rows of the same, lat/lon maps ``[N, n_lat, n_lon, 1]``, waveforms ``[N, L]``.
:meth:`ecop_wrap.data.SignalDataset.to_arrays` turns ``[N, M, D]`` values into these shapes.
"""

from ._curves import plot_psnr_curves
from ._images import plot_reconstructions
from ._selection import plot_selection
from ._waveforms import plot_waveforms

__all__ = ["plot_psnr_curves", "plot_reconstructions", "plot_selection", "plot_waveforms"]
