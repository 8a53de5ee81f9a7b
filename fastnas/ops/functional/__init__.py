"""The fast supernet's CPU autograd Functions as ``torch.library`` custom ops (they also run on
CUDA under the torch kernel backend): conv blocks, depthwise and pointwise convolutions, node
sums, BatchNorm write-back, and which gradients a backward needs (``grad_edges``)."""
