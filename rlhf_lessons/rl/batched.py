"""Several seeds trained as one batched computation (lessons 01-02).

A claim about an RL algorithm rests on several seeds. CartPole's networks are tiny: a forward
pass of a 64-unit MLP is microseconds of arithmetic and tens of microseconds of Python and
dispatch overhead (the overhead of each operation and autograd node is the cost, which is why
:class:`TanhMLP` and :class:`SeedAdam` write out what torch would do in several calls), so
training S seeds one after another pays it S times. Here the S seeds train side by side, with a
leading seed dimension on every tensor (:func:`stack_seeds`), and pay it once.

The seeds never interact: each has its own random streams (:class:`SeedRandom`); the loss is
the *sum* of the seeds' own losses, so each seed's parameters get exactly the gradient they
would get alone; Adam works element by element; clipping (:func:`clip_grad_norm_per_seed_`)
and advantage normalisation are per seed. So seed ``i`` in a batch is the same run as seed
``i`` alone, up to floating-point rounding (which chaotic training amplifies over time: the
same run statistically, not bit for bit). ``tests/test_batched.py`` checks both.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import nn

T = TypeVar("T")


class SeedLinear(nn.Module):
    """S independent ``nn.Linear`` layers of one shape: (S, ..., in) -> (S, ..., out).

    ``weight`` is (S, in, out) and ``bias`` (S, 1, out); seed ``s`` computes
    ``x[s] @ weight[s] + bias[s]`` (``torch.baddbmm``), which equals ``layers[s](x[s])``.
    """

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        if any(layer.bias is None for layer in layers):
            raise ValueError("SeedLinear needs Linear layers with a bias")
        self.weight = nn.Parameter(torch.stack([layer.weight.detach().T for layer in layers]))
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers])[:, None])

    def extra_repr(self) -> str:
        seeds, n_in, n_out = self.weight.shape
        return f"seeds={seeds}, in_features={n_in}, out_features={n_out}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seeds, n_in = self.weight.shape[:2]
        if x.dim() == 3 and x.shape[0] == seeds and x.shape[2] == n_in:
            return torch.baddbmm(self.bias, x, self.weight)  # (S, B, in): the common case
        if x.shape[0] != seeds or x.shape[-1] != n_in:
            raise ValueError(
                f"SeedLinear expects (seeds={seeds}, ..., {n_in}), got {tuple(x.shape)}: "
                "the leading dimension of a seed-batched network's input is the seed"
            )
        out = torch.baddbmm(self.bias, x.reshape(seeds, -1, n_in), self.weight)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def stack_seeds(modules: Sequence[nn.Module]) -> nn.Module:
    """One module that computes all of ``modules`` (same class and shapes) at once.

    A copy of ``modules[0]`` in which every ``nn.Linear`` is replaced by a :class:`SeedLinear`
    holding the matching layer of every module. Only ``nn.Linear`` may hold parameters (the
    activations are element-wise, so they work on the extra dimension as they are).
    """
    if not modules:
        raise ValueError("stack_seeds needs at least one module")
    stacked = copy.deepcopy(modules[0])
    for name, layer in modules[0].named_modules():
        if isinstance(layer, nn.Linear):
            stacked.set_submodule(name, SeedLinear([m.get_submodule(name) for m in modules]))
        elif any(True for _ in layer.parameters(recurse=False)):
            raise TypeError(
                f"stack_seeds supports parameters in nn.Linear layers only; {name!r} is a "
                f"{type(layer).__name__} with parameters of its own"
            )
    return stacked


@torch.no_grad()
def load_seed_(module: nn.Module, stacked: nn.Module, seed_index: int) -> nn.Module:
    """Copy seed ``seed_index``'s weights from ``stacked`` into the plain ``module`` (in place;
    returned for convenience). A stacked module with an ``unstack_(module, seed_index)``
    method of its own (such as :class:`~rlhf_lessons.rl.ppo.SeedActorCritic`) does it."""
    if hasattr(stacked, "unstack_"):
        return stacked.unstack_(module, seed_index)
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Linear):
            source = stacked.get_submodule(name)
            layer.weight.copy_(source.weight[seed_index].T)
            layer.bias.copy_(source.bias[seed_index, 0])
    return module


_ONE, _TWO = torch.tensor(1.0), torch.tensor(2.0)  # tensor operands: numbers are converted per call


def _tanh_(x: torch.Tensor) -> torch.Tensor:
    """tanh(x / 2), in place, for ``x`` that holds 2 * pre-activation: tanh(z) = 2 sigmoid(2z) - 1.
    The same function as ``torch.tanh`` (to float rounding), by a cheaper CPU kernel."""
    return torch.sigmoid_(x).mul_(_TWO).sub_(_ONE)


def tanh_mlp(x, w0, b0, w1, b1, w2, b2) -> torch.Tensor:
    """:class:`TanhMLP`'s forward in plain tensor ops (no gradient wanted: rollouts and
    evaluation, where the autograd Function's own call overhead would dominate)."""
    h = torch.tanh(torch.baddbmm(b0, x, w0))
    h = torch.tanh(torch.baddbmm(b1, h, w1))
    return torch.baddbmm(b2, h, w2)


class TanhMLP(torch.autograd.Function):
    """Batched 2-hidden-layer tanh MLPs, with the backward written out (one autograd node
    instead of eight).

    Forward, for every network n at once (``torch.baddbmm``): ``h1 = tanh(x W0 + b0)``,
    ``h2 = tanh(h1 W1 + b1)``, ``out = h2 W2 + b2``. Shapes: ``x`` (n, B, in), weights
    (n, in, out), biases (n, 1, out). Backward, with ``g = dL/d out`` and tanh' = 1 - tanh^2:
    ``dW2 = h2^T g``, ``db2 = sum_B g``, ``g1 = (g W2^T) (1 - h2^2)``, ``dW1 = h1^T g1``,
    ``db1 = sum_B g1``, ``g0 = (g1 W1^T) (1 - h1^2)``, ``dW0 = x^T g0``, ``db0 = sum_B g0``,
    ``dx = g0 W0^T``. ``tests/test_batched.py`` checks both against autograd.
    """

    @staticmethod
    def forward(ctx, x, w0, b0, w1, b1, w2, b2):
        out, saved = tanh_mlp_forward(x, w0, b0, w1, b1, w2, b2)
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx, g):
        return tanh_mlp_backward(ctx.saved_tensors, g, input_grad=ctx.needs_input_grad[0])


def tanh_mlp_forward(x, w0, b0, w1, b1, w2, b2) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """:class:`TanhMLP`'s forward: ``(out, saved)``, ``saved`` what :func:`tanh_mlp_backward`
    needs (for a loss that runs the network inside its own autograd node)."""
    # baddbmm's beta = alpha = 2 give 2 * pre-activation, for _tanh_ (exact: a power of 2)
    h1 = _tanh_(torch.baddbmm(b0, x, w0, beta=2.0, alpha=2.0))
    h2 = _tanh_(torch.baddbmm(b1, h1, w1, beta=2.0, alpha=2.0))
    return torch.baddbmm(b2, h2, w2), (x, w0, w1, w2, h1, h2)


def tanh_mlp_backward(
    saved: Sequence[torch.Tensor], g: torch.Tensor, input_grad: bool = True,
    out: Sequence[torch.Tensor] | None = None,
):  # fmt: skip
    """:class:`TanhMLP`'s backward: gradients of ``(x, w0, b0, w1, b1, w2, b2)`` given
    ``g = dL/d out`` (``dx`` is None unless ``input_grad``). ``out``: six contiguous tensors to
    write the gradients of ``(w0, b0, w1, b1, w2, b2)`` into (the same numbers)."""
    x, w0, w1, w2, h1, h2 = saved
    tanh_grad = torch.ops.aten.tanh_backward  # (g, y) -> g * (1 - y^2)
    g1 = tanh_grad(torch.bmm(g, w2.mT), h2)
    g0 = tanh_grad(torch.bmm(g1, w1.mT), h1)
    dx = torch.bmm(g0, w0.mT) if input_grad else None
    if out is not None:
        for (a, b), dw, db in zip(((x, g0), (h1, g1), (h2, g)), out[::2], out[1::2], strict=True):
            torch.bmm(a.mT, b, out=dw)
            torch.sum(b, 1, keepdim=True, out=db)
        return (dx, *out)
    return (
        dx,
        torch.bmm(x.mT, g0), g0.sum(1, keepdim=True),
        torch.bmm(h1.mT, g1), g1.sum(1, keepdim=True),
        torch.bmm(h2.mT, g), g.sum(1, keepdim=True),
    )  # fmt: skip


class SeedAdam:
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam(params, lr=lr, eps=eps, fused=True)``
    computes it: :meth:`step` calls the same fused kernel (``torch._fused_adam_``), without the
    :class:`torch.optim.Optimizer` wrapper's per-call bookkeeping (hooks, profiler records, state
    look-ups). Set :attr:`lr` to schedule the learning rate. Adam acts element by element, so
    one optimizer for all seeds keeps them apart. ``tests/test_batched.py`` checks it.
    """

    def __init__(
        self, params: Iterable[nn.Parameter], lr: float, eps: float = 1e-8,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:  # fmt: skip
        self.params = list(params)
        self.lr, self.eps, self.betas = lr, eps, betas
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.step_count = torch.zeros(())  # Adam's t, the same for every parameter

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        if any(p.grad is None for p in self.params):
            raise ValueError("SeedAdam.step: every parameter needs a gradient (call backward)")
        # what torch.optim.adam's fused path runs, without its grouping by device and dtype;
        # torch keeps one step counter per parameter, all equal: here one, shared
        self.step_count += 1
        torch._fused_adam_(
            self.params, [p.grad for p in self.params], self.exp_avg, self.exp_avg_sq, [],
            [self.step_count] * len(self.params), amsgrad=False, lr=self.lr,
            beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0, eps=self.eps,
            maximize=False, grad_scale=None, found_inf=None,
        )  # fmt: skip


@torch.no_grad()
def clip_grad_norm_per_seed_(
    parameters: Iterable[nn.Parameter], max_norm: float, eps: float = 1e-6, seeds: int | None = None
) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for each seed on its own.

    Every parameter holds the seeds' slices one after another along its leading dimension
    (``seeds`` of them; default: the leading dimension's size, one slice per row), so
    ``p.view(seeds, -1)[s]`` is seed ``s``'s. Seed ``s``'s gradient norm is taken over its slices
    of all parameters, and its slices are scaled by ``min(1, max_norm / (norm_s + eps))``
    (torch's rule). Returns the (S,) norms before clipping.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    rows = [g.view(seeds or g.shape[0], -1) for g in grads]  # (S, numel / S) views
    norms = torch.linalg.vector_norm(torch.cat(rows, dim=1), dim=1)  # (S,)
    torch._foreach_mul_(rows, [clip_scale(norms, max_norm, eps)] * len(rows))
    return norms


def clip_scale(norms: torch.Tensor, max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """torch's gradient-clipping factor ``min(1, max_norm / (norm + eps))`` of each seed's norm
    (S,), as an (S, 1) column; in place on a new tensor (``max_norm / t`` is torch's
    ``t.reciprocal() * max_norm``: the same numbers)."""
    return (norms + eps).reciprocal_().mul_(max_norm).clamp_(max=1.0)[:, None]


class SeedRandom:
    """Independent random streams for each seed of a batched run.

    Each seed's ``numpy.random.SeedSequence`` is split into three children: one initialises its
    networks (:meth:`build`), one draws its environments' start states (``numpy``, NumPy
    generators for :class:`~rlhf_lessons.rl.cartpole.CartPoles`), one draws its actions and
    minibatch orders (:meth:`uniform`, :meth:`permutations`).
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        self.seeds = [int(s) for s in seeds]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list without repeats, got {seeds!r}")
        children = [np.random.SeedSequence(s).spawn(3) for s in self.seeds]
        self.init_seeds = [int(c[0].generate_state(1)[0]) for c in children]
        self.numpy = [np.random.default_rng(c[1]) for c in children]
        self.torch = [
            torch.Generator().manual_seed(int(c[2].generate_state(1)[0])) for c in children
        ]

    def __len__(self) -> int:
        return len(self.seeds)

    def build(self, make: Callable[[], T]) -> list[T]:
        """``make()`` (networks, or a tuple of them) once per seed, each under its own
        initialisation seed (the global torch generator is left as it was)."""
        modules = []
        for init_seed in self.init_seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                modules.append(make())
        return modules

    def only(self, module: T) -> list[T]:
        """``[module]``: a given network, trained in place, is the batch's one seed."""
        if len(self) != 1:
            raise ValueError(
                f"a given policy trains as one seed, but {len(self)} seeds were asked for: "
                "train several seeds from fresh networks (policy=None), or pass one seed"
            )
        return [module]

    def uniform(self, *shape: int) -> torch.Tensor:
        """(S, *shape) numbers in [0, 1), seed ``s``'s from its own generator."""
        return torch.stack([torch.rand(shape, generator=g) for g in self.torch])

    def gumbel(self, *shape: int) -> torch.Tensor:
        """(S, *shape) standard Gumbel noise ``-log(-log(u))``, seed ``s``'s from its own
        generator. ``argmax(log pi + gumbel)`` over the last dimension is a sample of pi (the
        Gumbel-max trick), one random number per action."""
        return -torch.log(-torch.log(self.uniform(*shape).clamp_(min=1e-30)))

    def permutations(self, count: int, n: int) -> torch.Tensor:
        """(S, count, n): ``count`` random orders of ``range(n)`` for each seed."""
        return self.uniform(count, n).argsort(-1)


def minibatches(
    batch: Sequence[torch.Tensor], size: int, epochs: int, rand: SeedRandom
) -> Iterator[list[torch.Tensor]]:
    """``epochs`` passes over each seed's batch, in minibatches of ``size`` of its rows.

    ``batch`` holds (S, B, ...) tensors, one row per seed; each pass visits each seed's B rows
    in that seed's own random order, and yields the same tensors cut to (S, size, ...). With
    one minibatch per pass (``size == B``) the batch itself is yielded: every loss is a mean
    over the minibatch, which the order does not change.
    """
    n = batch[0].shape[1]
    if size == n:
        yield from (list(batch) for _ in range(epochs))
        return
    rows = torch.arange(len(rand))[:, None]
    for order in rand.permutations(epochs, n).unbind(1):
        for idx in order.split(size, dim=1):  # (S, size)
            yield [x[rows, idx] for x in batch]
