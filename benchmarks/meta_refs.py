"""The per-task references of ``meta_train.py``: a plain hand-written loop and ``higher``.

What a user writes from the seed's recipe, per task of a meta-batch: the frozen inputs of the
adapted module computed once (the task's embeddings; for the default model also the frozen
network's output, the items' rows and the user's prior), then ``steps`` inner SGD steps on
the adapted module, then the query loss. The meta-gradient is one ``torch.autograd.grad`` of
the mean query loss over the meta-batch, on every side alike.

- MeLU's recipe (fast = the MLP): the adapted module is MeLU's ``nn.Sequential`` MLP on the
  concatenated [user; item] embeddings, as MeLU's code builds it.
- the default model (fast = the user's bias and factor): a two-parameter module adding the
  collaborative part to the frozen network's output; the inner loss has the ridge term
  λ‖θ − θ₀‖² and the (n + λ) denominator of ``melu.model.maml.masked_mse``.

Each task's support and query features are gathered beforehand (unpadded rows, the
trainer's hidden items applied), outside the timing, as a per-task data set on disk would
give them; melu's side gathers and pads inside its timing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from melu.features import FeatureBatch
from melu.model.estimator import Params, PreferenceEstimator
from melu.training.episodes import hide_items
from melu.training.meta_trainer import MetaTrainer


class Task(NamedTuple):
    """One task's unpadded rows: features (1, N) per field, ratings (N,)."""

    support: FeatureBatch
    s_ratings: Tensor
    query: FeatureBatch
    q_ratings: Tensor


def gather_tasks(trainer: MetaTrainer, indices: Tensor) -> list[Task]:
    """The tasks ``indices`` (B,) of the trainer's training set, features gathered."""
    tasks, out = trainer.train_tasks, []
    field, hidden = trainer.model.id_field, trainer.hidden

    def rows(user: Tensor, items: Tensor) -> FeatureBatch:
        feat = trainer.tables.gather(user, items.long())
        return hide_items(feat, field, hidden) if hidden is not None and field else feat

    for t in indices.tolist():
        s_n, q_n = int(tasks.support_mask[t].sum()), int(tasks.query_mask[t].sum())
        user = tasks.user_rows[t : t + 1].long()
        s = rows(user, tasks.support_items[t : t + 1, :s_n])
        q = rows(user, tasks.query_items[t : t + 1, :q_n])
        out.append(Task(s, tasks.support_ratings[t, :s_n], q, tasks.query_ratings[t, :q_n]))
    return out


class UserOffsets(nn.Module):
    """The default model's fast parameters and its collaborative part on frozen inputs."""

    def __init__(self, bias: Tensor, factor: Tensor) -> None:
        super().__init__()
        self.bias, self.factor = nn.Parameter(bias), nn.Parameter(factor)

    def forward(self, net: Tensor, item: Tensor, user: Tensor) -> Tensor:
        """``net`` (N,) the MLP's output, ``item`` (N, k+1) and ``user`` (k+1,) the rows of
        (b_i, q_i) and the prior (b_u⁰, p_u⁰) → predictions (N,)."""
        factor = user[1:] + self.factor
        return net + item[:, 0] + user[0] + self.bias + item[:, 1:] @ factor


class Reference:
    """The adapted module of ``trainer``'s model and the per-task frozen inputs it takes.

    ``params``: the meta-parameters the references differentiate (the trainer's, except
    the fast ones, which are the module's own ``nn.Parameter``s sharing their storage).
    """

    def __init__(self, trainer: MetaTrainer) -> None:
        self.model: PreferenceEstimator = trainer.model
        self.meta, self.fast = trainer.config.meta, trainer.fast
        self.lam = self.model.config.support_prior
        src = trainer.params
        if self.model.factors:
            self.module: nn.Module = UserOffsets(
                src["user.bias"].detach(), src["user.factor"].detach()
            )
            self.prefix = "user."
        else:
            layers: list[nn.Module] = []
            for n_in, n_out in self.model.widths:
                layers += [nn.Linear(n_in, n_out), nn.ReLU()]
            self.module = nn.Sequential(*layers[:-1])
            for w, b in self.model.linears:  # mlp.<i>.weight → layer i
                layer = self.module[int(w.split(".")[1])]
                layer.weight, layer.bias = (
                    nn.Parameter(src[w].detach()),
                    nn.Parameter(src[b].detach()),
                )
            self.prefix = "mlp."
        own = {self.prefix + k: p for k, p in self.module.named_parameters()}
        assert sorted(own) == sorted(self.fast), (sorted(own), self.fast)
        self.names = list(own)  # the fast parameters in the module's order
        self.params: Params = {k: own.get(k, v) for k, v in src.items()}

    def inputs(self, features: FeatureBatch) -> tuple[Tensor, ...]:
        """The adapted module's frozen inputs for one task's rows (computed once)."""
        p, enc = self.params, self.model.encode(self.params, features)
        if not self.model.factors:  # [user; item] per row, as MeLU concatenates (N, 192)
            user = enc.user.expand(enc.items.shape[1], -1)
            return (torch.cat([user, enc.items[0]], dim=-1),)
        net = self.model.network(p, enc)[0]  # (N,)
        item = enc.items[0] @ p["content.weight"].mT  # (N, k+1)
        ids = enc.ids[0]
        item = item + torch.cat([p["item.bias"][ids, None], p["item.factor"][ids]], dim=-1)
        return net, item, enc.user[0] @ p["prior.weight"].mT + p["prior.bias"]

    def inner_loss(self, pred: Tensor, ratings: Tensor, fast: Params) -> Tensor:
        """The support loss: (SSE + λ‖θ − θ₀‖²) / (n + λ); the MSE when λ = 0."""
        loss = ((pred - ratings) ** 2).sum()
        for k in self.model.anchored if self.lam else ():
            loss = loss + self.lam * ((fast[k] - self.params[k]) ** 2).sum()
        return loss / (len(ratings) + self.lam)

    def query_loss(self, pred: Tensor, ratings: Tensor) -> Tensor:
        return ((pred - ratings) ** 2).mean()


def plain_loop(ref: Reference, tasks: list[Task]) -> Tensor:
    """Mean query loss after per-task ``functional_call`` + ``autograd.grad`` adaptation."""
    meta, cut, losses = ref.meta, len(ref.prefix), []
    for task in tasks:
        s_in, q_in = ref.inputs(task.support), ref.inputs(task.query)
        fast = {k: ref.params[k] for k in ref.names}
        for _ in range(meta.inner_steps):
            pred = functional_call(ref.module, {k[cut:]: v for k, v in fast.items()}, s_in)
            loss = ref.inner_loss(pred.reshape(-1), task.s_ratings, fast)
            grads = torch.autograd.grad(
                loss, list(fast.values()), create_graph=not meta.first_order
            )
            fast = {k: v - meta.inner_lr * g for (k, v), g in zip(fast.items(), grads, strict=True)}
        pred = functional_call(ref.module, {k[cut:]: v for k, v in fast.items()}, q_in)
        losses.append(ref.query_loss(pred.reshape(-1), task.q_ratings))
    return torch.stack(losses).mean()


def higher_available() -> bool:
    try:
        import higher  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def _ctx(ref: Reference) -> Iterator[tuple[Any, Any]]:
    import higher

    sgd = torch.optim.SGD(ref.module.parameters(), lr=ref.meta.inner_lr)
    with higher.innerloop_ctx(ref.module, sgd, copy_initial_weights=False) as (fmodel, diffopt):
        yield fmodel, diffopt


def higher_loop(ref: Reference, tasks: list[Task]) -> Tensor:
    """The same adaptation by ``higher.innerloop_ctx`` (first order: its ``grad_callback``
    detaches the inner gradients, the library's way to cut the second-order terms)."""
    meta, losses = ref.meta, []
    cut = (lambda gs: [g.detach() for g in gs]) if meta.first_order else None
    for task in tasks:
        s_in, q_in = ref.inputs(task.support), ref.inputs(task.query)
        with _ctx(ref) as (fmodel, diffopt):
            for _ in range(meta.inner_steps):
                full = dict(zip(ref.names, fmodel.parameters(), strict=True))
                loss = ref.inner_loss(fmodel(*s_in).reshape(-1), task.s_ratings, full)
                diffopt.step(loss, grad_callback=cut)
            losses.append(ref.query_loss(fmodel(*q_in).reshape(-1), task.q_ratings))
    return torch.stack(losses).mean()
