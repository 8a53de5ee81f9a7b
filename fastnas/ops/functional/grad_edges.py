"""Which gradients a custom ``autograd.Function`` must compute in the current backward: the
CPU Functions here and the Triton ops of ``fastnas.kernels`` share one definition, which lives
with the kernels (they import nothing of fastnas, see ``fastnas.kernels.grad_edges``)."""
from ...kernels.grad_edges import needed, record

__all__ = ["needed", "record"]
