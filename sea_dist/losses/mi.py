"""Mutual-information terms for SEA's distancing: the CLUB upper bound and SAND's bounded -L2."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sea_dist.losses.native import HIDDEN, ClubKernel, KernelChoice, club_kernel, kernel_forced


class CLUB(nn.Module):
    r"""Contrastive Log-ratio Upper Bound of mutual information, sampled version.

    From Cheng et al., "CLUB: A Contrastive Log-ratio Upper Bound of Mutual Information"
    (ICML 2020, https://arxiv.org/abs/2006.12013), in the form SEA uses (spec section 2).
    A variational Gaussian :math:`q(y \mid x) = \mathcal{N}(\mu(x), \mathrm{diag}(e^{s(x)}))`
    with

    .. math::
        \ell_i(y) = \sum_d \Big[ -\frac{(\mu_d(x_i) - y_d)^2}{2 e^{s_d(x_i)}}
                                 - \frac{s_d(x_i)}{2} \Big],
        \qquad
        \widehat{I}(x; y) = \max\Big(0, \tfrac12 \cdot \tfrac1N \sum_i
                            \big[\ell_i(y_i) - \ell_i(y_{\pi(i)})\big]\Big)

    for a random permutation :math:`\pi`. The factor :math:`\tfrac12` and the clamp follow the
    SEA reference; for Gaussians the halved estimate still upper-bounds the true MI once
    :math:`q` fits (``rho^2 / (2 (1 - rho^2)) >= -log(1 - rho^2) / 2``).

    The module has the two methods of the original estimator: :meth:`forward` is the bound
    the MODEL minimises (gradients flow into ``x`` and ``y``), :meth:`learning_loss` is the
    negative log-likelihood the ESTIMATOR minimises on detached samples, with its own optimizer.

    Args:
        x_dim (int): width of the conditioning samples ``x``.
        y_dim (int): width of the predicted samples ``y``.
        hidden (int): hidden width of the ``mu`` and ``logvar`` networks (SEA: 8).

    Shapes:
        x: ``[N, x_dim]``, y: ``[N, y_dim]`` -> scalar.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden: int) -> None:
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim))
        # tanh keeps log-variances in [-1, 1], so the likelihood cannot blow up.
        self.logvar = nn.Sequential(
            nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim), nn.Tanh()
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for net in (self.mu, self.logvar):
            for layer in net:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-row ``l_i(y_i)``, without the constant ``-log(2 pi) / 2`` per coordinate."""
        return _gaussian_log_likelihood(self.mu(x), self.logvar(x), y)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        mu, logvar = self.mu(x), self.logvar(x)
        perm = torch.randperm(x.shape[0], device=x.device)
        positive = _gaussian_log_likelihood(mu, logvar, y)  # l_i(y_i)
        negative = _gaussian_log_likelihood(mu, logvar, y[perm])  # l_i(y_pi(i))
        return torch.clamp(0.5 * (positive - negative).mean(), min=0.0)

    def learning_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """``-mean_i l_i(y_i)``: fit ``q`` to the pairs (call on detached samples)."""
        return -self.log_likelihood(x, y).mean()


def _gaussian_log_likelihood(mu: Tensor, logvar: Tensor, y: Tensor) -> Tensor:
    return (-((mu - y) ** 2) / (2 * logvar.exp()) - logvar / 2).sum(dim=1)  # [N]


def neg_l2_distancing(x: Tensor, y: Tensor) -> Tensor:
    r"""SAND's distancing term, bounded: minus the mean squared distance of unit vectors.

    .. math::
        \mathcal{L} = -\frac{1}{N} \sum_i \Big\lVert \frac{x_i}{\lVert x_i \rVert}
                      - \frac{y_i}{\lVert y_i \rVert} \Big\rVert^2 \in [-4, 0]

    The unnormalised ``-||x - y||^2`` of the SAND paper is unbounded below, so minimising it
    only inflates the projections; on the unit sphere the minimum (-4) means ``y_i = -x_i``.

    Shapes:
        x, y: ``[N, d]`` -> scalar.
    """
    diff = F.normalize(x, dim=1) - F.normalize(y, dim=1)
    return -diff.pow(2).sum(dim=1).mean()


@dataclass
class CLUBTerms:
    """What a model's forward hands the estimator fit: term ``t`` fits
    ``estimators[index[t]]`` to the detached pairs ``(x[t], y[t])``.

    Shapes:
        index: ``[T]``; x: ``[T, N, x_dim]``; y: ``[T, N, y_dim]``.
    """

    estimators: list[CLUB]
    index: Tensor
    x: Tensor
    y: Tensor


class CLUBStack:
    r"""Several :class:`CLUB` estimators packed into one flat buffer, with a fused NLL gradient.

    Fitting ``q`` runs dozens of steps per model step on the same detached pairs; through
    autograd and ``torch.optim`` every step pays a few dozen small kernels per estimator, the
    Python around them and fresh temporaries (page faults, on this machine's allocator). Here
    every layer of every estimator is a slice of one buffer, all fitted terms go through one
    batched matmul per layer, temporaries live in a workspace reused by every step, and
    :meth:`nll_and_grad` writes the analytic gradient of :meth:`CLUB.learning_loss` into a
    buffer of the same layout, so an optimizer steps a single tensor.

    Layout per estimator ``e`` (``h`` hidden; the two first layers side by side, as they read
    the same ``x``): ``w1 = [W_mu0 | W_lv0]^T`` ``[x_dim, 2h]``, ``b1`` ``[2h]``, ``w2_mu``
    ``[h, y_dim]``, ``w2_lv`` ``[h, y_dim]``, ``b2 = [b_mu2 | b_lv2]`` ``[2 y_dim]``. A packed
    buffer maps to the modules' parameters elementwise (transposes only), so per-parameter
    optimizer state packs the same way (:meth:`pack`, :meth:`unpack`).

    On the CPU, when the compiled kernel builds (``sea_dist/losses/native.py``) and beats
    torch on the machine (:func:`fit_kernel`), each term's forward and backward run in one C
    pass instead; the torch route below is the fallback.

    Args:
        estimators: the modules, all of the same shape.
        native: use the compiled kernel where it applies.
    """

    _PARAMS = ("mu.0.weight", "logvar.0.weight", "mu.0.bias", "logvar.0.bias",
               "mu.2.weight", "logvar.2.weight", "mu.2.bias", "logvar.2.bias")  # fmt: skip

    def __init__(self, estimators: list[CLUB], native: bool = True) -> None:
        first = estimators[0]
        self.estimators = estimators
        self.hidden = first.mu[0].out_features
        self.x_dim, self.y_dim = first.mu[0].in_features, first.mu[2].out_features
        h, dx, dy = self.hidden, self.x_dim, self.y_dim
        self._shapes = {
            "w1": (dx, 2 * h), "b1": (1, 2 * h), "w2_mu": (h, dy), "w2_lv": (h, dy), "b2": (1, 2 * dy),
        }  # fmt: skip
        self.numel_per_estimator = sum(a * b for a, b in self._shapes.values())
        self._work: dict[str, Tensor] = {}
        self._kernel = fit_kernel(dx, dy, h) if native else None

    def parameters(self) -> list[list[nn.Parameter]]:
        """Per estimator, its parameters in :attr:`_PARAMS` order."""
        return [[dict(e.named_parameters())[n] for n in self._PARAMS] for e in self.estimators]

    def views(self, flat: Tensor) -> dict[str, Tensor]:
        """Named ``[E, ...]`` views of a packed buffer ``[E * numel_per_estimator]``."""
        per = flat.view(len(self.estimators), self.numel_per_estimator)
        out, offset = {}, 0
        for name, (a, b) in self._shapes.items():
            out[name] = per[:, offset : offset + a * b].view(-1, a, b)
            offset += a * b
        return out

    def pack(self, tensors: list[list[Tensor]]) -> Tensor:
        """One flat buffer from per-estimator tensors ordered as :meth:`parameters`."""
        ref = tensors[0][0]
        flat = ref.new_empty(len(self.estimators) * self.numel_per_estimator)
        v = self.views(flat)
        for e, (w_mu0, w_lv0, b_mu0, b_lv0, w_mu2, w_lv2, b_mu2, b_lv2) in enumerate(tensors):
            v["w1"][e].copy_(torch.cat([w_mu0, w_lv0]).t())
            v["b1"][e, 0].copy_(torch.cat([b_mu0, b_lv0]))
            v["w2_mu"][e].copy_(w_mu2.t())
            v["w2_lv"][e].copy_(w_lv2.t())
            v["b2"][e, 0].copy_(torch.cat([b_mu2, b_lv2]))
        return flat

    def unpack(self, flat: Tensor, tensors: list[list[Tensor]]) -> None:
        """Copy a packed buffer into per-estimator tensors (the inverse of :meth:`pack`)."""
        v, h, dy = self.views(flat), self.hidden, self.y_dim
        for e, (w_mu0, w_lv0, b_mu0, b_lv0, w_mu2, w_lv2, b_mu2, b_lv2) in enumerate(tensors):
            w1 = v["w1"][e].t()
            w_mu0.copy_(w1[:h])
            w_lv0.copy_(w1[h:])
            b_mu0.copy_(v["b1"][e, 0, :h])
            b_lv0.copy_(v["b1"][e, 0, h:])
            w_mu2.copy_(v["w2_mu"][e].t())
            w_lv2.copy_(v["w2_lv"][e].t())
            b_mu2.copy_(v["b2"][e, 0, :dy])
            b_lv2.copy_(v["b2"][e, 0, dy:])

    def _workspace(self, x: Tensor) -> dict[str, Tensor]:
        t, n, _ = x.shape
        h, dx, dy = self.hidden, self.x_dim, self.y_dim
        shapes = {
            "pre": (t, n, 2 * h), "hid": (t, n, 2 * h), "active": (t, n, 2 * h),
            "g_h_mu": (t, n, h), "g_h_lv": (t, n, h), "g_hid": (t, n, 2 * h), "r": (t, n, dy), "sig": (t, n, dy), "s": (t, n, dy),
            "inv_var": (t, n, dy), "sq": (t, n, dy), "g_mu": (t, n, dy), "g_z": (t, n, dy),
            "d_w1": (t, dx, 2 * h), "d_b1": (t, 1, 2 * h), "d_w2_mu": (t, h, dy), "d_w2_lv": (t, h, dy), "d_b2": (t, 1, 2 * dy),
        }  # fmt: skip
        work = self._work
        if work.get("pre") is None or work["pre"].shape != shapes["pre"]:
            work.clear()
            work.update({name: x.new_zeros(shape) for name, shape in shapes.items()})
        return work

    def is_shared(self, index: Tensor) -> bool:
        """Whether every term fits the one estimator; several need one term each, in order."""
        if len(self.estimators) == 1:
            return True
        if len(index) != len(self.estimators):
            raise ValueError("several estimators need exactly one term each, in order")
        return False

    def kernel_for(self, flat: Tensor, x: Tensor) -> ClubKernel | None:
        """The compiled kernel if it applies to these tensors (float32, CPU), else ``None``."""
        on_cpu = flat.device.type == x.device.type == "cpu"
        return self._kernel if on_cpu and flat.dtype == x.dtype == torch.float32 else None

    def _native_nll_and_grad(
        self, kernel: ClubKernel, flat: Tensor, x: Tensor, y: Tensor, grad: Tensor, loss: bool
    ) -> Tensor | None:
        """:meth:`nll_and_grad` through the compiled kernel, one call per term."""
        terms, rows, _ = x.shape
        x, y = x.contiguous(), y.contiguous()
        params = flat.view(-1, self.numel_per_estimator)
        parts = flat.new_empty(terms, self.numel_per_estimator)
        total = 0.0
        for t in range(terms):
            e = 0 if len(params) == 1 else t
            total += kernel.nll_and_grad(params[e], x[t], y[t], parts[t], 1.0 / rows)
        if len(params) == 1:  # one estimator shared by every term: gradients add up
            torch.sum(parts, 0, keepdim=True, out=grad.view(1, -1))
        else:
            grad.copy_(parts.view(-1))
        return flat.new_tensor(total) if loss else None

    def adam_fit(
        self, theta: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, index: Tensor, x: Tensor,
        y: Tensor, steps: int, step: int, lr: float, betas: tuple[float, float], eps: float,
        weight_decay: float,
    ) -> float:  # fmt: skip
        """``steps`` steps of ``torch.optim.Adam``'s single-tensor update on the packed buffer
        ``theta`` and its moments, in place, with the gradient of :meth:`nll_and_grad`.

        ``step`` counts the steps taken before. Through the compiled kernel where it applies
        (one call for the whole loop), else in torch.

        Returns:
            The loss before the last step.
        """
        kernel = self.kernel_for(theta, x)
        if kernel is not None:
            return kernel.adam_fit(
                theta, exp_avg, exp_avg_sq, x.contiguous(), y.contiguous(),
                self.is_shared(index), steps, step, lr, betas, eps, weight_decay,
            )  # fmt: skip
        beta1, beta2 = betas
        grad = torch.empty_like(theta)
        for k in range(steps):
            loss = self.nll_and_grad(theta, index, x, y, grad, loss=k == steps - 1)
            if weight_decay:
                grad.add_(theta, alpha=weight_decay)
            step += 1
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
            theta.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
        return float(loss)

    def nll_and_grad(
        self, flat: Tensor, index: Tensor, x: Tensor, y: Tensor, grad: Tensor, *, loss: bool = False
    ) -> Tensor | None:
        r"""Gradient of :math:`\sum_t \mathrm{mean}_i -\ell_{t,i}` into ``grad`` (same layout).

        Term ``t`` fits estimator ``index[t]`` on the pairs ``(x[t], y[t])``; every term is a
        mean over its ``N`` rows, as :meth:`CLUB.learning_loss`. With ``r = mu - y`` and
        ``s = tanh(z)`` the log-variance, the per-coordinate NLL is ``r^2 e^{-s} / 2 + s / 2``,
        so ``d/dmu = r e^{-s}`` and ``d/dz = (1 - r^2 e^{-s}) (1 - s^2) / 2``.

        Args:
            flat: packed parameters; index: ``[T]`` estimator of each term;
            x: ``[T, N, x_dim]``; y: ``[T, N, y_dim]``; grad: packed output buffer.
            loss: also return the loss (two more reductions).

        Returns:
            The loss if ``loss`` else ``None``.
        """
        shared = self.is_shared(index)
        kernel = self.kernel_for(flat, x)
        if kernel is not None:
            return self._native_nll_and_grad(kernel, flat, x, y, grad, loss)
        p, g, w = self.views(flat), self.views(grad), self._workspace(x)
        h, dy, scale = self.hidden, self.y_dim, 1.0 / x.shape[1]

        def pick(t: Tensor) -> Tensor:  # the estimator of every term
            return t.expand(len(index), -1, -1) if shared else t

        torch.baddbmm(pick(p["b1"]), x, pick(p["w1"]), out=w["pre"])
        hid = torch.clamp_min(w["pre"], 0, out=w["hid"])
        w2_mu, w2_lv, b2 = pick(p["w2_mu"]), pick(p["w2_lv"]), pick(p["b2"])
        r, sig, s, inv_var, sq = w["r"], w["sig"], w["s"], w["inv_var"], w["sq"]
        # The halves of ``hid`` are strided views that BLAS reads in place (row stride 2h).
        torch.baddbmm(b2[..., :dy], hid[..., :h], w2_mu, out=r).sub_(y)  # mu - y
        # tanh(z) = 2 sigmoid(2z) - 1 and e^{-s} = 1 / sigmoid(s) - 1: torch 2.2's CPU tanh
        # and exp kernels are several times slower than its sigmoid.
        torch.baddbmm(b2[..., dy:], hid[..., h:], w2_lv, beta=2, alpha=2, out=sig).sigmoid_()
        torch.mul(sig, 2, out=s).sub_(1)
        torch.sigmoid(s, out=inv_var).reciprocal_().sub_(1)
        g_mu, g_z = w["g_mu"], w["g_z"]
        torch.mul(r, inv_var, out=g_mu)  # r e^{-s}
        torch.mul(r, g_mu, out=sq)  # r^2 e^{-s}
        value = (sq.sum() + s.sum()) * (0.5 * scale) if loss else None
        # (1 - s^2) / 2 = 2 sig (1 - sig)
        torch.addcmul(sig, sig, sig, value=-1, out=g_z).mul_(sq.neg_().add_(1)).mul_(2 * scale)
        g_mu.mul_(scale)
        # The two hidden halves' gradients go to contiguous buffers (with a strided ``out``,
        # bmm computes into a temporary and copies), then side by side for one x^T matmul.
        torch.bmm(g_mu, w2_mu.transpose(1, 2), out=w["g_h_mu"])
        torch.bmm(g_z, w2_lv.transpose(1, 2), out=w["g_h_lv"])
        g_hid = torch.cat([w["g_h_mu"], w["g_h_lv"]], dim=2, out=w["g_hid"])
        # ReLU's derivative as a 0/1 float mask: masked_fill_ with a bool mask is 10x slower.
        g_hid.mul_(torch.sign(hid, out=w["active"]))
        torch.bmm(x.transpose(1, 2), g_hid, out=w["d_w1"])
        torch.sum(g_hid, 1, keepdim=True, out=w["d_b1"])
        torch.bmm(hid[..., :h].transpose(1, 2), g_mu, out=w["d_w2_mu"])
        torch.bmm(hid[..., h:].transpose(1, 2), g_z, out=w["d_w2_lv"])
        torch.sum(g_mu, 1, keepdim=True, out=w["d_b2"][..., :dy])
        torch.sum(g_z, 1, keepdim=True, out=w["d_b2"][..., dy:])
        per_term = {
            "w1": w["d_w1"], "b1": w["d_b1"], "w2_mu": w["d_w2_mu"],
            "w2_lv": w["d_w2_lv"], "b2": w["d_b2"],
        }  # fmt: skip
        for name, value_t in per_term.items():
            if shared:
                torch.sum(value_t, dim=0, keepdim=True, out=g[name])
            else:
                g[name].copy_(value_t)
        return value


def fit_kernel(x_dim: int, y_dim: int, hidden: int) -> ClubKernel | None:
    """The compiled kernel for estimators of this shape if it is the faster fit here.

    ``SEA_DIST_NATIVE=1`` takes a kernel that builds without asking; otherwise its first use
    on a machine (and torch thread count) races it against the torch route
    (:func:`kernel_choice`, about a tenth of a second), and the verdict is kept beside the
    library.
    """
    kernel = club_kernel(x_dim, y_dim, hidden)
    if kernel is None or kernel_forced():
        return kernel
    return kernel if kernel_choice(kernel).use_kernel else None


def kernel_choice(kernel: ClubKernel) -> KernelChoice:
    """The race of ``kernel`` against torch's route (:func:`race_kernel`), run once per
    machine and thread count, kept beside the library."""
    return kernel.choose(lambda: race_kernel(kernel))


RACE_ROWS, RACE_STEPS, RACE_REPEAT = 1024, 10, 3


def race_kernel(kernel: ClubKernel) -> tuple[float, float]:
    """Seconds for the same fit (two estimators, ``RACE_ROWS`` pairs each, ``RACE_STEPS``
    Adam steps) through ``kernel`` and through torch: the best of ``RACE_REPEAT`` after a
    warm-up, so a busy moment on the machine cannot decide it."""
    x_dim, y_dim = kernel.x_dim, kernel.y_dim
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, RACE_ROWS, x_dim, generator=generator)
    y = torch.randn(2, RACE_ROWS, y_dim, generator=generator)
    index = torch.arange(2)
    with torch.random.fork_rng():  # the estimators' initialisation must not move the seed
        estimators = [CLUB(x_dim, y_dim, HIDDEN) for _ in range(2)]
    seconds = []
    for native in (True, False):
        stack = CLUBStack(estimators, native=False)
        stack._kernel = kernel if native else None
        theta = stack.pack([[p.detach() for p in g] for g in stack.parameters()])
        moments = torch.zeros_like(theta), torch.zeros_like(theta)
        best = math.inf
        for k in range(RACE_REPEAT + 1):
            start = time.perf_counter()
            stack.adam_fit(theta, *moments, index, x, y, RACE_STEPS, k * RACE_STEPS, 1e-3,
                           (0.9, 0.999), 1e-8, 0.0)  # fmt: skip
            if k:
                best = min(best, time.perf_counter() - start)
        seconds.append(best)
    return seconds[0], seconds[1]
