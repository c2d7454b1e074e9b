"""Judges of the embedded world: an identity embedder (its ArcFace) and a context classifier (its CLIP-T).

Both are small residual CNNs on 64x64 RGB, trained by `pretrain.judges` on rendered images whose
truth is known, and shipped as one safetensors file each with their config in the metadata.
They share no class or weight with the E4T encoder (`e4t/encoder.py`): the judges and the judged
stay separate, so a concept cannot score well by exploiting its own encoder's features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from e4t.errors import InvalidInput
from e4t.images import to_tensor
from e4t.safetensors_io import from_bytes, read_file, to_bytes, write_file

IDENTITY_FORMAT = "e4t.judge.identity/1"
CONTEXT_FORMAT = "e4t.judge.context/1"
IDENTITY_FILE = "identity.safetensors"
CONTEXT_FILE = "context.safetensors"
CONTEXT_KINDS: tuple[str, ...] = ("background", "medium", "accessory")


@dataclass(frozen=True)
class JudgeArch:
    """Constructor arguments of a judge network; stored in the file so it rebuilds the same object."""

    image_size: int = 64
    stem: int = 16  # width of the full-resolution stem conv
    channels: tuple[int, ...] = (32, 64, 128, 192)  # one stride-2 stage each: 64 -> 4 px
    blocks: tuple[int, ...] = (1, 1, 1, 1)  # residual blocks per stage
    out_dim: int = 128  # width of the output feature (the identity embedding)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping) -> JudgeArch:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class _ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class JudgeBackbone(nn.Module):
    """ResNet-ish CNN: [N, 3, S, S] in [-1, 1] -> [N, out_dim] features.

    The last feature map is flattened, not pooled (ArcFace's "E" output block): where a mark sits
    (left mole vs right scar) is part of an identity, and global pooling would throw it away.
    """

    def __init__(self, arch: JudgeArch):
        super().__init__()
        if len(arch.channels) != len(arch.blocks):
            raise ValueError(
                f"`channels` and `blocks` must have the same length but are {arch.channels} and {arch.blocks}."
            )
        final = arch.image_size // 2 ** len(arch.channels)
        if final < 1 or arch.image_size % 2 ** len(arch.channels):
            raise ValueError(f"`image_size` must be divisible by {2 ** len(arch.channels)} but is {arch.image_size}.")
        layers: list[nn.Module] = [_conv_bn(3, arch.stem, 1)]
        cin = arch.stem
        for c, n in zip(arch.channels, arch.blocks, strict=True):
            layers.append(_conv_bn(cin, c, 2))
            layers.extend(_ResBlock(c) for _ in range(n))
            cin = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.1),
            nn.Linear(cin * final * final, arch.out_dim, bias=False),
            nn.BatchNorm1d(arch.out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def images_to_batch(images: Sequence[Image.Image] | torch.Tensor, size: int) -> torch.Tensor:
    """[N, 3, size, size] in [-1, 1] from PIL images (resized, center-cropped) or such a tensor."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (size, size):
            raise InvalidInput(f"image tensor must have shape [N, 3, {size}, {size}] but has {list(images.shape)}")
        return images.float()
    images = list(images)
    if not images:
        raise InvalidInput("expected at least one image but got none")
    return torch.cat([to_tensor(im, size) for im in images])


@torch.no_grad()
def _run(net: nn.Module, images: Sequence[Image.Image] | torch.Tensor, size: int, batch: int = 256) -> torch.Tensor:
    pixels = images_to_batch(images, size)
    net.eval()
    return torch.cat([net(chunk) for chunk in pixels.split(batch)])


def _state_to_file(net: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    # BatchNorm's counter is an int64 that inference never reads; dropping it keeps the file all-float
    return {
        k: v.to(dtype) if v.is_floating_point() else v
        for k, v in net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def _state_from_file(net: nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    tensors = {k: v.float() for k, v in tensors.items()}
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise InvalidInput(f"{what} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")


class _JudgeFile:
    """One safetensors file per judge, its config in the metadata; subclasses name their format."""

    FORMAT: str
    WHAT: str

    def _stored_module(self) -> nn.Module:
        return self  # type: ignore[return-value]

    def to_bytes(self, dtype: torch.dtype = torch.float16) -> bytes:
        return to_bytes(_state_to_file(self._stored_module(), dtype), self.FORMAT, self.config)

    def save(self, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
        write_file(path, self.to_bytes(dtype))

    @classmethod
    def load(cls, path: str | Path):
        return cls._build(*read_file(path, cls.FORMAT), repr(str(path)))

    @classmethod
    def from_bytes(cls, data: bytes):
        return cls._build(*from_bytes(data, cls.FORMAT, cls.WHAT), cls.WHAT)


class IdentityJudge(_JudgeFile, nn.Module):
    """Identity embedder: images -> 128-d L2-normalized embeddings; same identity -> high cosine."""

    FORMAT, WHAT = IDENTITY_FORMAT, "identity judge"

    def __init__(self, arch: JudgeArch, info: dict | None = None):
        super().__init__()
        self.arch = arch
        self.info: dict = dict(info or {})  # vocabularies, training figures: everything but the arch
        self.net = JudgeBackbone(arch)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(pixels), dim=-1)

    def embed(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """[N, out_dim] unit-norm embeddings of PIL images (or an [N, 3, S, S] tensor in [-1, 1])."""
        return F.normalize(_run(self.net, images, self.arch.image_size), dim=-1)

    def id_similarity(
        self, a_images: Sequence[Image.Image] | torch.Tensor, b_images: Sequence[Image.Image] | torch.Tensor
    ) -> float:
        """Mean cosine over all (a, b) pairs: the ID similarity of generated vs reference images."""
        return float((self.embed(a_images) @ self.embed(b_images).T).mean())

    @property
    def config(self) -> dict:
        return {**self.info, "arch": self.arch.to_json()}

    def _stored_module(self) -> nn.Module:
        return self.net  # the file holds the backbone, as it always has

    @classmethod
    def _build(cls, tensors: dict[str, torch.Tensor], config: dict, what: str) -> IdentityJudge:
        judge = cls(JudgeArch.from_json(config["arch"]), {k: v for k, v in config.items() if k != "arch"})
        _state_from_file(judge.net, tensors, what)
        return judge.eval()


@dataclass(frozen=True)
class ContextVocab:
    """Label vocabularies of the context heads, and the caption phrase of each label."""

    labels: dict[str, tuple[str, ...]]  # kind -> labels, kinds in CONTEXT_KINDS order
    phrases: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> label -> phrase ("" = unnamed)

    def to_json(self) -> dict:
        return {"labels": {k: list(v) for k, v in self.labels.items()}, "phrases": self.phrases}

    @classmethod
    def from_json(cls, d: Mapping) -> ContextVocab:
        return cls({k: tuple(v) for k, v in d["labels"].items()}, dict(d.get("phrases", {})))


class ContextJudge(_JudgeFile, nn.Module):
    """Context classifier: one backbone, one linear head per label kind (background, medium, accessory)."""

    FORMAT, WHAT = CONTEXT_FORMAT, "context judge"

    def __init__(self, arch: JudgeArch, vocab: ContextVocab, info: dict | None = None):
        super().__init__()
        if set(vocab.labels) != set(CONTEXT_KINDS):
            raise ValueError(f"context vocabulary must name the kinds {CONTEXT_KINDS} but names {tuple(vocab.labels)}.")
        self.arch, self.vocab = arch, vocab
        self.info: dict = dict(info or {})
        self.net = nn.Sequential(JudgeBackbone(arch), nn.ReLU())
        self.heads = nn.ModuleDict({k: nn.Linear(arch.out_dim, len(vocab.labels[k])) for k in CONTEXT_KINDS})

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per label kind."""
        feats = self.net(pixels)
        return {k: head(feats) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: Sequence[Image.Image] | torch.Tensor) -> list[dict[str, str]]:
        """Predicted label per kind for each image, e.g. {"background": "beach", "medium": "sketch", ...}."""
        pixels = images_to_batch(images, self.arch.image_size)
        self.eval()
        logits = {k: torch.cat([self(c)[k] for c in pixels.split(256)]) for k in CONTEXT_KINDS}
        idx = {k: v.argmax(-1).tolist() for k, v in logits.items()}
        return [{k: self.vocab.labels[k][idx[k][i]] for k in CONTEXT_KINDS} for i in range(len(pixels))]

    def context_accuracy(
        self, images: Sequence[Image.Image] | torch.Tensor, contexts: Sequence[Mapping[str, str]]
    ) -> float:
        """Fraction of images whose predictions match every label their requested context names.

        `contexts[i]` holds only the kinds the prompt of image i names (e.g. {"background": "beach"});
        images whose prompt names no context are not counted.
        """
        contexts = list(contexts)
        if len(contexts) != len(images):
            raise InvalidInput(
                f"expected one context per image but got {len(contexts)} contexts for {len(images)} images"
            )
        for ctx in contexts:
            for kind, label in ctx.items():
                if label not in self.vocab.labels.get(kind, ()):
                    raise InvalidInput(
                        f"context {kind}={label!r} is not one of {self.vocab.labels.get(kind, CONTEXT_KINDS)}"
                    )
        named = [i for i, ctx in enumerate(contexts) if ctx]
        if not named:
            raise InvalidInput("none of the requested contexts names a label; nothing to score")
        picked = images[named] if isinstance(images, torch.Tensor) else [images[i] for i in named]
        preds = self.predict(picked)
        hits = [all(p[k] == v for k, v in contexts[i].items()) for p, i in zip(preds, named, strict=True)]
        return sum(hits) / len(hits)

    @property
    def config(self) -> dict:
        return {**self.info, "arch": self.arch.to_json(), "vocab": self.vocab.to_json()}

    @classmethod
    def _build(cls, tensors: dict[str, torch.Tensor], config: dict, what: str) -> ContextJudge:
        info = {k: v for k, v in config.items() if k not in ("arch", "vocab")}
        judge = cls(JudgeArch.from_json(config["arch"]), ContextVocab.from_json(config["vocab"]), info)
        _state_from_file(judge, tensors, what)
        return judge.eval()


def verification(sim: torch.Tensor, same: torch.Tensor, valid: torch.Tensor, fold: torch.Tensor) -> dict[str, float]:
    """Face-verification figures over the valid pairs of a similarity matrix.

    accuracy: balanced accuracy (mean of true-accept and true-reject rates) at a threshold chosen on
    the other fold (2-fold, as LFW's protocol does with 10); tar_at_far_1e-2: genuine pairs accepted at
    the threshold that lets 1% of impostor pairs through; mean cosines of both kinds of pair.
    """
    s, y, f = sim[valid].double(), same[valid], fold[valid]
    if y.all() or not y.any():
        raise ValueError(f"verification needs genuine and impostor pairs but got {int(y.sum())} genuine of {len(y)}.")

    def balanced(scores: torch.Tensor, labels: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
        acc_pos = (scores[labels][None] >= thr[:, None]).double().mean(1) if labels.any() else 1
        acc_neg = (scores[~labels][None] < thr[:, None]).double().mean(1) if (~labels).any() else 1
        return (acc_pos + acc_neg) / 2

    grid = torch.linspace(-1, 1, 401, dtype=torch.float64)
    accs = []
    for train_fold in (True, False):
        tr, te = f == train_fold, f != train_fold
        acc = balanced(s[tr], y[tr], grid)
        thr = grid[(acc == acc.max()).nonzero().flatten()].median()  # the middle of the best plateau, not its edge
        accs.append(float(balanced(s[te], y[te], thr[None])))
    far_thr = torch.quantile(s[~y].float(), 0.99)
    return {
        "accuracy": round(sum(accs) / 2, 4),
        "tar_at_far_1e-2": round(float((s[y] > far_thr).double().mean()), 4),
        "threshold_at_far_1e-2": round(float(far_thr), 4),
        "cos_same": round(float(s[y].mean()), 4),
        "cos_diff": round(float(s[~y].mean()), 4),
        "genuine_pairs": int(y.sum()),
        "impostor_pairs": int((~y).sum()),
    }


class Judges(NamedTuple):
    identity: IdentityJudge
    context: ContextJudge


def load_judges(directory: str | Path) -> Judges:
    """Both judges from a folder holding identity.safetensors and context.safetensors."""
    directory = Path(directory)
    return Judges(IdentityJudge.load(directory / IDENTITY_FILE), ContextJudge.load(directory / CONTEXT_FILE))
