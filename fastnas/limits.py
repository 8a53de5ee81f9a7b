"""The limits on every size that comes from a file or a user, in one place.

A size read from a file (a genotype's node count, a panel's row, a paper checkpoint's layer count
or claimed tensor shape) or given by a user (layers, channels, threads) decides how much memory
fastnas allocates and how long it runs. Each is checked here, before anything large is
allocated, against a bound that follows from the rest of the input where there is one (a panel's
row is below the number of panels; a checkpoint's layers are the cells it holds tensors for), or
else against a documented limit below. The limits sit far above the papers' settings (DARTS: 8
search cells of 16 channels, 20 final cells of 36; ENAS: 12 macro layers), so no real run meets
them; they stop a typo or a crafted file from taking the machine down. The README's
"Interruptions and failures" lists them; the configs, the command line, ``fastnas plot`` and
``convert-paper`` call the checks here, so the Python API and the CLI give the same messages.

The network size is estimated before the network exists: a cell of ``C`` channels whose ``E``
edges hold ``k C^2`` weights each and whose two preprocessing convolutions hold ``C_in C`` each
has about ``E k C^2 + (C_pp + C_p) C`` weights; ``C`` doubles at the reduction cells
``layers // 3`` and ``2 layers // 3``. ``k = 8`` for a DARTS mixed op (6 in its pointwise
convolutions, 2 for its depthwise ones, BatchNorms and reductions), ``k <= 14`` for one op of a
final cell (``conv_7x1_1x7`` is the largest), ``k = 40`` for a layer of the ENAS macro space
(one ``E = 1`` "cell" per layer, all its ops).
"""
from __future__ import annotations

import os
from typing import Any, Optional

MAX_LAYERS = 100            # cells (DARTS, ENAS micro) or layers (ENAS macro) of a network
MAX_CHANNELS = 1024         # initial channels of a network
MAX_NODES = 16              # intermediate nodes of a cell (a genotype has 2 edges per node)
MAX_IN_CHANNELS = 64        # image channels
MAX_CLASSES = 100_000       # classes of a classifier
MAX_WEIGHTS = 1 << 30       # estimated weights of a network (4 GiB in float32), see above
MAX_IMAGE_SIZE = 1024       # side of the synthetic images of ``fastnas profile``
MAX_FILE_BYTES = 1 << 20    # a genotype file
MAX_RUN_JSON_BYTES = 32 << 20  # a run folder's metrics.json or alphas.json
MAX_PANELS = 6_000          # distributions in alphas.json (DARTS: 28, ENAS macro: 90)
MAX_OPTIONS = 64            # options of one distribution (DARTS: 8 ops)
MAX_FIGURE_PANELS = 300     # panels the alphas figure draws (more are skipped, saying so)
CPUS = os.cpu_count() or 1
MAX_THREADS = 4 * CPUS      # CPU threads: oversubscribing the cores further only thrashes
MAX_WORKERS = max(8, 2 * CPUS)  # data loader processes, each holding a copy of the data

SUPERNET_EDGE_WEIGHTS = 8   # k of a DARTS mixed op: 6 pointwise, 2 for the rest (see above)
FINAL_EDGE_WEIGHTS = 14     # the largest k of one op of a final cell (conv_7x1_1x7)
MACRO_LAYER_WEIGHTS = 40    # k of an ENAS macro layer: 9 + 25 (convs) + 2 + 2 (sep convs) + 2


def check_at_most(name: str, value: Any, limit: int, what: str = "") -> None:
    """ValueError naming ``name``, ``value`` and the limit unless ``value <= limit`` (a value
    that is no number is left to the type checks)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
        why = f" ({what})" if what else ""
        raise ValueError(f"{name} must be <= {limit}{why}, got {value!r}")


def supernet_edges(nodes: int) -> int:
    """Edges of a search cell: node ``i`` reads the two inputs and the ``i`` earlier nodes."""
    return nodes * (nodes + 3) // 2


def network_weights(channels: int, layers: int, nodes: int, edges: int, edge_weights: int,
                    stem_multiplier: int = 3) -> int:
    """The estimated weight count of a cell network (see the module docstring)."""
    c_pp = c_p = stem_multiplier * channels
    c = channels
    total = 0
    for i in range(layers):
        if i in (layers // 3, 2 * layers // 3):
            c *= 2
        total += edges * edge_weights * c * c + (c_pp + c_p) * c
        c_pp, c_p = c_p, nodes * c
    return total


def check_sizes(layers: int = 0, channels: int = 0, nodes: int = 0, num_classes: int = 0,
                in_channels: int = 0, layers_name: str = "layers") -> None:
    """ValueError naming the first of the sizes over its limit."""
    check_at_most(layers_name, layers, MAX_LAYERS)
    check_at_most("channels", channels, MAX_CHANNELS)
    check_at_most("num_nodes", nodes, MAX_NODES)
    check_at_most("num_classes", num_classes, MAX_CLASSES)
    check_at_most("in_channels", in_channels, MAX_IN_CHANNELS)


def check_network(channels: int, layers: int, nodes: int, edges: Optional[int] = None,
                  edge_weights: int = FINAL_EDGE_WEIGHTS, what: str = "the network",
                  num_classes: int = 0, in_channels: int = 0,
                  layers_name: str = "layers") -> None:
    """ValueError unless the sizes are within their limits (``check_sizes``) and the network's
    estimated weights within ``MAX_WEIGHTS`` (``edges`` per cell: a final cell's ``2 nodes`` by
    default); nothing is allocated."""
    check_sizes(layers, channels, nodes, num_classes, in_channels, layers_name)
    check_at_most("num_classes", num_classes, MAX_CLASSES)
    check_at_most("in_channels", in_channels, MAX_IN_CHANNELS)
    edges = 2 * nodes if edges is None else edges
    weights = network_weights(channels, layers, nodes, edges, edge_weights)
    if weights > MAX_WEIGHTS:
        raise ValueError(f"{what} with channels={channels}, layers={layers} and {nodes} nodes "
                         f"would hold about {weights / 1e9:.1f} billion weights; the limit is "
                         f"{MAX_WEIGHTS / 1e9:.1f} billion (fewer channels or layers)")


def check_threads(value: int, flag: str = "threads") -> Optional[str]:
    """The one-line reason ``value`` threads are too many, or None."""
    if value > MAX_THREADS:
        return (f"{value} {flag} is more than this machine can use ({CPUS} CPUs: at most "
                f"{MAX_THREADS})")
    return None


__all__ = ["CPUS", "FINAL_EDGE_WEIGHTS", "MACRO_LAYER_WEIGHTS", "MAX_CHANNELS", "MAX_CLASSES",
           "MAX_FIGURE_PANELS", "MAX_FILE_BYTES", "MAX_IMAGE_SIZE", "MAX_IN_CHANNELS",
           "MAX_LAYERS", "MAX_NODES", "MAX_OPTIONS", "MAX_PANELS", "MAX_RUN_JSON_BYTES",
           "MAX_THREADS", "MAX_WEIGHTS", "MAX_WORKERS", "SUPERNET_EDGE_WEIGHTS", "check_at_most",
           "check_network", "check_sizes", "check_threads", "network_weights", "supernet_edges"]
