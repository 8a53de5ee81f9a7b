"""What a run shows besides its JSON: the alpha history, figures, Graphviz cells, TensorBoard.

    alphas.py       AlphaHistory: per epoch, the relaxation's strengths of every edge (DARTS) or the
                    controller's per-decision probabilities (ENAS); the run's ``alphas.json``
    cells.py        a genotype's cell as a matplotlib figure and as Graphviz DOT text
    nb201_cells.py  a NAS-Bench-201 cell, the same two ways
    figures.py      the alpha grid, learning curves, the ENAS controller's reward and entropy
    plots.py        ``fastnas plot``: a stage folder's figures into ``plots/``; PlotObserver
    tensorboard.py  TensorBoardObserver: scalars, alphas and genotype text per epoch
    extras.py       the optional packages (matplotlib, tensorboard) and the line naming them

Nothing here imports matplotlib or tensorboard until a figure or a writer is made, so the
pipeline (which writes ``alphas.json``) runs without either. The observers follow the protocol
of ``fastnas.pipeline.StageObserver`` (``start``, ``epoch``, ``end``) without importing it: this
package sits below the pipeline.
"""
from .alphas import AlphaHistory, Panel, write_alpha_history
from .cells import cell_dot, cell_figure
from .extras import MissingExtra
from .plots import PlotObserver, plot_run, plot_stage, remove_figures
from .tensorboard import TensorBoardObserver

__all__ = ["AlphaHistory", "MissingExtra", "Panel", "PlotObserver", "TensorBoardObserver",
           "cell_dot", "cell_figure", "plot_run", "plot_stage", "remove_figures",
           "write_alpha_history"]
