"""PROTO-CLIP-F and PROTO-CLIP-F-Q: image and text prototype memories with a query adapter
(Jaykumar P et al., "Proto-CLIP: Vision-Language Prototypical Network for Few-Shot Learning",
IROS 2024; official code github.com/IRVLUTD/Proto-CLIP).

Two memories are initialised from the few-shot set: the visual memory holds the cache keys
(each image's views averaged and renormalised, ``(N, d)``), the textual memory the zero-shot
classifier ``(C, d)``. The image prototype of class c is the renormalised mean of its normalised
visual memory entries, the text prototype its normalised textual memory entry. A query image
``f`` goes through the residual query adapter (:class:`~hgadapter.heads.QueryAdapter`, ``conv-3x``
/ ``conv-2x`` / ``fc``) and is renormalised, then (:func:`~hgadapter.heads.prototype_probabilities`)

    p(y | f) = alpha * softmax_y(-beta |q - z_y|^2) + (1 - alpha) * softmax_y(-beta |q - t_y|^2).

Training (``main.py`` / ``main.qt.py``) minimises ``L1 + L2 + L3``: the negative log of ``p`` at
the label, and InfoNCE (temperature 0.1) from the image prototypes to the text prototypes and
back, over the visual memory, the adapter and (``train_text_memory``) the textual memory, with
AdamW (eps 1e-4, weight decay 0.05) at the dataset's alpha and beta, keeping the epoch with the
best validation accuracy. The variants differ in their queries: PROTO-CLIP-F (``main.py``)
queries with the few-shot keys themselves, PROTO-CLIP-F-Q^T (``main.qt.py``, the row of the
HeGraphAdapter paper's Table 2) with freshly augmented training images (here one cached view per
image per epoch), in batches of 1024. After training, alpha and beta are searched on validation
(the source prints this "HP-search" result beside the fixed-alpha/beta one).

Changes, and why (docs/baselines.md): PROTO-CLIP-F's episodes (a random 20-40 % of the classes,
each split at random into support and query shots) are replaced by random batches of keys
(``batch_size``), so that it runs in the one training loop; the source's cosine schedule, whose
period is ``epochs * N`` epochs but which is stepped once per epoch, never leaves
``[(1 + cos(pi / N)) / 2, 1] * lr`` and is run as a constant rate; the best epoch is the earliest
best on validation (the source keeps the latest of equal ones); the source's ImageNet
"validation" is its test split.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hgadapter.data.cache import FewShotSet
from hgadapter.heads import QUERY_ADAPTERS, PrototypeHead, QueryAdapter, prototype_probabilities
from hgadapter.methods._common import CHECKPOINTS, TrainedMethod, cache_model
from hgadapter.methods._registry import hparam, register_method
from hgadapter.protocol import SelectionData, accuracy
from hgadapter.train import Schedule

__all__ = ["ProtoCLIPConfig", "ProtoCLIPFConfig", "ProtoCLIPFQ", "ProtoCLIPF", "info_nce", "ALPHA_GRID", "BETA_GRID", "LOSSES"]

LOSSES: tuple[str, ...] = ("L1", "L2", "L3", "L4")  # NLL; InfoNCE image->text; text->image; (L4) within each modality
ALPHA_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))  # the official post-training search: 0, 0.1, ..., 1
BETA_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10)) + tuple(float(b) for b in range(1, 21))  # 0.1 ... 0.9, 1 ... 20
QUERIES: tuple[str, ...] = ("views", "keys")  # F-Q^T: augmented training images; F: the few-shot keys


def info_nce(query: torch.Tensor, positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the other rows as negatives (the ``info-nce-pytorch`` package's default mode):
    cross-entropy of ``cos(q_i, k_j) / temperature`` with target ``j = i``. Shapes: ``(C, d)`` x2 -> scalar."""
    logits = F.normalize(query, dim=-1) @ F.normalize(positive, dim=-1).T / temperature  # (C, C)
    return F.cross_entropy(logits, torch.arange(query.shape[0], device=query.device))


@dataclass(frozen=True)
class ProtoCLIPConfig:
    """PROTO-CLIP-F-Q^T (official ``configs/imagenet.yml`` and ``main.qt.py``)."""

    alpha: float = hparam(0.5, low=0.0)  # weight of the image prototypes while training (1 - alpha: text prototypes)
    beta: float = hparam(12.0, positive=True)  # sharpness of the softmax over squared distances while training
    adapter: str = hparam("conv-2x", choices=QUERY_ADAPTERS)  # query adapter (ImageNet: conv-2x)
    adapter_width: int = hparam(16, low=1)  # channels of the conv adapter
    train_text_memory: bool = hparam(False)  # train the textual memory too (train_vis_mem_only: True on ImageNet)
    losses: tuple[str, ...] = hparam(("L1", "L2", "L3"), choices=LOSSES)  # loss terms summed
    temperature: float = hparam(0.1, positive=True)  # InfoNCE temperature (the package's default)
    lr: float = hparam(1e-4, positive=True)  # AdamW learning rate (held constant, see the module docstring)
    eps: float = hparam(1e-4, positive=True)  # AdamW epsilon
    weight_decay: float = hparam(0.05, low=0.0)  # AdamW weight decay
    epochs: int = hparam(2000, low=0)  # training epochs (train_epoch)
    batch_size: int = hparam(1024, low=1)  # queries per step
    queries: str = hparam("views", choices=QUERIES)  # views: one augmented view per image (F-Q^T); keys: the cache keys (F)
    checkpoint: str = hparam("best_val", choices=CHECKPOINTS)  # which epoch's memories to keep
    drop_last: bool = hparam(False)  # skip each epoch's partial last batch
    search: bool = hparam(True)  # after training, search alpha and beta on validation (false: keep the training values)


@dataclass(frozen=True)
class ProtoCLIPFConfig(ProtoCLIPConfig):
    """PROTO-CLIP-F (official ``main.py``): the few-shot keys are the queries."""

    batch_size: int = hparam(256, low=1)  # queries per step (the source samples episodes instead; docs/baselines.md)
    queries: str = hparam("keys", choices=QUERIES)  # views: one augmented view per image (F-Q^T); keys: the cache keys (F)


class _Memories(nn.Module):
    """The visual memory, the textual memory and the query adapter, and the prototypes they give."""

    def __init__(self, *, keys: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, adapter: QueryAdapter, train_text: bool) -> None:
        super().__init__()
        self.visual = nn.Parameter(keys.clone())  # (N, d)
        if train_text:
            self.textual = nn.Parameter(text.clone())  # (C, d)
        else:
            self.register_buffer("textual", text.clone())
        self.adapter = adapter
        self.labels = labels  # (N,): a plain attribute
        counts = torch.bincount(labels, minlength=text.shape[0]).clamp_min(1).to(keys.dtype)
        self.inv_counts = (1.0 / counts).unsqueeze(1)  # (C, 1)

    def prototypes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm image and text prototypes, ``(C, d)`` each."""
        visual = F.normalize(self.visual, dim=-1)  # (N, d)
        sums = visual.new_zeros(self.textual.shape).index_add(0, self.labels, visual)  # (C, d)
        return F.normalize(sums * self.inv_counts, dim=-1), F.normalize(self.textual, dim=-1)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.adapter(x.float()), dim=-1)  # (B, d)


class _ProtoCLIP(TrainedMethod):
    """PROTO-CLIP's fit; the registered variants differ in their config's queries and batch size."""

    def build(self, data: SelectionData, text: torch.Tensor, device: torch.device):
        cfg: ProtoCLIPConfig = self.config
        keys, _ = cache_model(data, device)  # (N, d)
        adapter = QueryAdapter(kind=cfg.adapter, dim=data.dim, width=cfg.adapter_width)
        memories = _Memories(
            keys=keys, labels=data.train_set.labels.to(device), text=text, adapter=adapter, train_text=cfg.train_text_memory
        ).to(device)

        def logits_fn(x: torch.Tensor) -> torch.Tensor:  # log p at the training alpha and beta
            image_proto, text_proto = memories.prototypes()
            p = prototype_probabilities(memories.query(x), image_proto, text_proto, alpha=cfg.alpha, beta=cfg.beta)
            return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))

        return memories, logits_fn

    def loss(self, module, logits_fn):
        cfg: ProtoCLIPConfig = self.config

        def loss_fn(query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            image_proto, text_proto = module.prototypes()
            total = query.new_zeros(())
            if "L1" in cfg.losses:
                p = prototype_probabilities(module.query(query), image_proto, text_proto, alpha=cfg.alpha, beta=cfg.beta)
                total = total + F.nll_loss(torch.log(p), target)
            if "L2" in cfg.losses:
                total = total + info_nce(image_proto, text_proto, cfg.temperature)
            if "L3" in cfg.losses:
                total = total + info_nce(text_proto, image_proto, cfg.temperature)
            if "L4" in cfg.losses:
                total = total + info_nce(image_proto, image_proto, cfg.temperature) + info_nce(text_proto, text_proto, cfg.temperature)
            return total

        return loss_fn

    def train_data(self, data: SelectionData) -> SelectionData:
        if self.config.queries == "views":
            return data
        keys, _ = cache_model(data, "cpu")  # (N, d): PROTO-CLIP-F queries with the keys themselves
        train_set = FewShotSet(shots=data.train_set.shots, seed=data.train_set.seed, features=keys.unsqueeze(1), labels=data.train_set.labels)
        return dataclasses.replace(data, train_set=train_set)

    def optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        cfg: ProtoCLIPConfig = self.config
        params = [p for p in module.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)

    def schedule(self, epochs: int) -> Schedule:
        lr = self.config.lr
        return lambda step, steps_per_epoch: lr

    def select(self, module, logits_fn, result, data, *, device):
        cfg: ProtoCLIPConfig = self.config
        with torch.no_grad():
            image_proto, text_proto = (t.detach().clone() for t in module.prototypes())
            alpha, beta = cfg.alpha, cfg.beta
            val_acc = result.val_acc
            if cfg.search:
                query = module.query(data.val_features.float().to(device))  # (B, d)
                labels = data.val_labels.to(device)
                dist_image, dist_text = torch.cdist(query, image_proto).pow(2), torch.cdist(query, text_proto).pow(2)  # (B, C) each
                table = torch.empty(len(ALPHA_GRID), len(BETA_GRID))
                for j, b in enumerate(BETA_GRID):
                    p_image, p_text = F.softmax(-b * dist_image, dim=1), F.softmax(-b * dist_text, dim=1)
                    for i, a in enumerate(ALPHA_GRID):
                        table[i, j] = accuracy(a * p_image + (1.0 - a) * p_text, labels)
                flat = int(torch.argmax(table.flatten()))  # the first best in (alpha, beta) order, as the official argmax over its list
                i, j = divmod(flat, len(BETA_GRID))
                alpha, beta, val_acc = ALPHA_GRID[i], BETA_GRID[j], float(table[i, j])
        head = PrototypeHead(image_proto=image_proto, text_proto=text_proto, alpha=alpha, beta=beta, adapter=copy.deepcopy(module.adapter))
        hparams: dict[str, Any] = {"alpha": float(alpha), "beta": float(beta), "train_alpha": cfg.alpha, "train_beta": cfg.beta}
        return head, val_acc, hparams


@register_method("proto_clip_f")
class ProtoCLIPF(_ProtoCLIP):
    """PROTO-CLIP-F: memories and query adapter trained with the few-shot keys as queries."""

    config_cls = ProtoCLIPFConfig


@register_method("proto_clip_f_q")
class ProtoCLIPFQ(_ProtoCLIP):
    """PROTO-CLIP-F-Q^T: memories and query adapter trained on augmented training images (the paper's Table 2 row)."""

    config_cls = ProtoCLIPConfig
