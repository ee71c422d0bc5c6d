"""Building blocks shared by the models: feature MLPs, projection heads, layer aggregation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from sea_dist.graph.batch import Block
from sea_dist.graph.ops import propagate


class FeatureMLP(nn.Module):
    r"""Item feature encoder of the multimodal GCN backbone (spec section 1).

    .. math::
        f = W_2\, \mathrm{leaky\_relu}(W_1 F)

    ``forward(F, pre=L)`` computes ``f(L(F))`` for a linear ``L`` with ``W_1 L`` as one
    matrix: ``[N, in] x [in, hidden]`` instead of two products through ``L``'s width.

    Args:
        in_dim (int): raw (or mapped) feature width.
        hidden (int): hidden width (reference: 256).
        out_dim (int): embedding width (reference: 64).

    Shapes:
        features: ``[N, in_dim]`` -> ``[N, out_dim]``.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(in_dim, hidden)
        self.lin2 = nn.Linear(hidden, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin1.reset_parameters()
        self.lin2.reset_parameters()

    def forward(self, features: Tensor, pre: nn.Linear | None = None) -> Tensor:
        if pre is None:
            hidden = self.lin1(features)
        else:
            w1, b1 = self.lin1.weight, self.lin1.bias
            hidden = F.linear(features, w1 @ pre.weight, F.linear(pre.bias, w1, b1))
        return self.lin2(F.leaky_relu(hidden))


class ProjectionHead(nn.Module):
    r"""SimCLR-style head: ``Linear - BN - ReLU - Linear - BN - ReLU - Linear``, unit rows.

    SEA projects each modality's generic part with one of these before SoloSimLoss.

    Args:
        in_dim (int): input width.
        hidden (int): hidden width (reference: 64).
        out_dim (int): output width (reference: 32).

    Shapes:
        x: ``[N, in_dim]`` (``N >= 2`` in training mode, for batch norm) -> ``[N, out_dim]``.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_dim),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.net:
            if isinstance(layer, (nn.Linear, nn.BatchNorm1d)):
                layer.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.net(x), dim=1)


def layer_sum(blocks: list[Block], x: Tensor, mean: bool = False) -> Tensor:
    r"""Parameter-free propagation over ``blocks``, aggregating layers ``0..L``.

    .. math::
        h_0 = x, \quad h_{l+1} = \hat{A}_l h_l, \quad
        \mathrm{out} = \sum_{l=0}^{L} h_l[:n_{out}] \quad (\text{or their mean})

    Destination nodes are a prefix of source nodes, so each layer's rows for the output
    nodes are its first ``n_out`` rows. With no blocks the result is ``x`` itself.

    Args:
        blocks: propagation blocks, input side first.
        x: input representations of ``blocks[0].src_nodes``.
        mean (bool, optional): average instead of sum (LightGCN). (default: :obj:`False`)

    Shapes:
        x: ``[N_in, d]`` -> ``[n_out, d]`` with ``n_out = blocks[-1].num_dst``.
    """
    n_out = blocks[-1].num_dst if blocks else x.shape[0]
    h, total = x, x[:n_out]
    for block in blocks:
        h = propagate(block, h)
        total = total + h[:n_out]
    return total / (len(blocks) + 1) if mean else total
