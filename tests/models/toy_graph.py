"""A tiny user-item graph with two modalities, and full-graph / hand-sampled batches over it.

Everything is built densely here, independently of the graph layer, so the model tests
check the models against the spec's equations and the :class:`MiniBatch` contract only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sea_dist.graph.batch import Block, MiniBatch

Triples = tuple[Tensor, Tensor, Tensor]  # users, positive items, negatives [B, K]; node ids


def dense_block(src_nodes: Tensor, num_dst: int, adj: Tensor) -> Block:
    """A :class:`Block` whose adjacency is the dense ``[num_dst, len(src_nodes)]`` ``adj``."""
    dst, src = torch.nonzero(adj, as_tuple=True)
    return Block.from_edges(src_nodes, num_dst, src, dst, adj[dst, src])


def _sym_norm(adj: Tensor) -> Tensor:
    deg = adj.sum(dim=1)
    inv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    return inv[:, None] * adj * inv[None, :]


@dataclass
class ToyGraph:
    num_users: int
    num_items: int
    a_hat: Tensor  # [N, N] D^-1/2 A D^-1/2 of the symmetric user-item graph
    s_items: Tensor  # [I, I] item-item hop matrix
    features: dict[str, Tensor]  # modality -> [I, d_m]
    interactions: list[tuple[int, int]]  # (user, item) training pairs

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items

    @property
    def s_full(self) -> Tensor:
        """``S`` embedded in the node id space: edges only between item rows and columns."""
        s = torch.zeros(self.num_nodes, self.num_nodes)
        s[self.num_users :, self.num_users :] = self.s_items
        return s

    def triples(self, count: int, num_negatives: int = 1, seed: int = 0) -> Triples:
        """(user, pos item id, neg item ids) as global node ids; negatives are unseen items."""
        gen = torch.Generator().manual_seed(seed)
        seen: dict[int, set[int]] = {}
        for u, i in self.interactions:
            seen.setdefault(u, set()).add(i)
        pick = torch.randperm(len(self.interactions), generator=gen)[:count]
        users, pos, neg = [], [], []
        for k in pick.tolist():
            u, i = self.interactions[k]
            unseen = [j for j in range(self.num_items) if j not in seen[u]]
            choice = torch.randint(len(unseen), (num_negatives,), generator=gen).tolist()
            users.append(u)
            pos.append(self.num_users + i)
            neg.append([self.num_users + unseen[c] for c in choice])
        return torch.tensor(users), torch.tensor(pos), torch.tensor(neg)

    def full_batch(self, num_layers: int, triples: Triples, item_graph: bool = True) -> MiniBatch:
        nodes = torch.arange(self.num_nodes)
        block = dense_block(nodes, self.num_nodes, self.a_hat)
        users, pos, neg = triples  # ids == positions in a full batch
        return MiniBatch(
            blocks=[block] * num_layers,
            input_nodes=nodes,
            output_nodes=nodes,
            users=users,
            pos_items=pos,
            neg_items=neg,
            loss_items=torch.arange(self.num_users, self.num_nodes),
            num_users=self.num_users,
            item_graph=dense_block(nodes, self.num_nodes, self.s_full) if item_graph else None,
            item_features=dict(self.features),
        )

    def sampled_batch(self, num_layers: int, triples: Triples) -> tuple[MiniBatch, Tensor]:
        """A batch built like a sampler with fanout "all": every neighbour of every dst node.

        Returns the batch and the output positions of the seed nodes (users, pos, neg).
        """
        users, pos, neg = triples
        seeds = list(dict.fromkeys([*users.tolist(), *pos.tolist(), *neg.flatten().tolist()]))
        s_full = self.s_full
        # Output nodes: the seeds, then the item-graph neighbours of seed items, so the item
        # hop is exact for every seed.
        extra = torch.nonzero(s_full[seeds].sum(0), as_tuple=True)[0].tolist()
        output = list(dict.fromkeys([*seeds, *extra]))
        layers = [output]
        for _ in range(num_layers):
            dst = layers[-1]
            nbrs = torch.nonzero(self.a_hat[dst].sum(0), as_tuple=True)[0].tolist()
            layers.append(list(dict.fromkeys([*dst, *nbrs])))  # dst nodes stay a prefix
        blocks = []
        for dst, src in zip(layers[:-1], layers[1:]):
            adj = self.a_hat[dst][:, src]
            blocks.append(dense_block(torch.tensor(src), len(dst), adj))
        blocks.reverse()  # input side first
        input_nodes = torch.tensor(layers[-1])
        out = torch.tensor(output)
        where = {n: p for p, n in enumerate(output)}
        item_pos = [p for p, n in enumerate(output) if n >= self.num_users and n in set(seeds)]
        batch = MiniBatch(
            blocks=blocks,
            input_nodes=input_nodes,
            output_nodes=out,
            users=torch.tensor([where[u] for u in users.tolist()]),
            pos_items=torch.tensor([where[i] for i in pos.tolist()]),
            neg_items=torch.tensor([[where[i] for i in row] for row in neg.tolist()]),
            loss_items=torch.tensor(item_pos),
            num_users=self.num_users,
            item_graph=dense_block(out, len(output), s_full[output][:, output]),
            item_features={
                m: f[input_nodes[input_nodes >= self.num_users] - self.num_users]
                for m, f in self.features.items()
            },
        )
        return batch, torch.tensor([where[n] for n in seeds])


def make_toy_graph(
    num_users: int = 10,
    num_items: int = 14,
    dims: dict[str, int] | None = None,
    knn_k: int = 3,
    seed: int = 0,
) -> ToyGraph:
    gen = torch.Generator().manual_seed(seed)
    dims = dims or {"image": 12, "text": 8}
    interactions = []
    for u in range(num_users):
        for i in torch.randperm(num_items, generator=gen)[: 2 + u % 4].tolist():
            interactions.append((u, i))
    n = num_users + num_items
    adj = torch.zeros(n, n)
    for u, i in interactions:
        adj[u, num_users + i] = adj[num_users + i, u] = 1.0
    features = {m: torch.randn(num_items, d, generator=gen) for m, d in dims.items()}
    s_items = torch.zeros(num_items, num_items)
    weights = [0.1] + [0.9 / (len(dims) - 1)] * (len(dims) - 1)
    for w, f in zip(weights, features.values()):
        unit = torch.nn.functional.normalize(f, dim=1)
        top = (unit @ unit.T).topk(knn_k, dim=1).indices
        knn = torch.zeros(num_items, num_items).scatter_(1, top, 1.0)
        s_items += w * _sym_norm(knn)
    return ToyGraph(num_users, num_items, _sym_norm(adj), s_items, features, interactions)
