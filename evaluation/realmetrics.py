"""CLIP-I, CLIP-T and DINO (Ruiz et al. 2023, sec. 4.1) from transformers model folders a user has on disk.

    CLIP-I: cosine of CLIP image embeddings, generated vs the subject's reference images
    CLIP-T: cosine of the CLIP image embedding with the prompt's text embedding (concept -> class word)
    DINO:   cosine of DINO ViT CLS embeddings, generated vs reference (more identity-sensitive than CLIP-I)

Folders load with `local_files_only=True`: nothing is downloaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image


def _check_folder(path: str | Path, what: str, needs: Sequence[str]) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder {str(root)!r} does not exist")
    missing = [n for n in needs if not (root / n).is_file()]
    if missing:
        raise ValueError(
            f"{str(root)!r} is not a {what} folder: expected {', '.join(needs)} but {', '.join(missing)} missing"
        )
    return root


def folder_digest(path: str | Path) -> str:
    """sha256 over the names and bytes of every file of a model folder (first 16 hex digits)."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _features(out) -> torch.Tensor:
    # transformers < 5 returns the projected tensor; 5.x returns an output whose pooler_output is projected
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _rgb(images: Sequence[Image.Image]) -> list[Image.Image]:
    images = list(images)
    if not images:
        raise ValueError("expected at least one image but got none")
    return [im.convert("RGB") for im in images]


def _in_batches(items: list, batch: int, embed) -> torch.Tensor:
    """`embed` applied to consecutive slices of `items`, concatenated."""
    return torch.cat([embed(items[i : i + batch]) for i in range(0, len(items), batch)])


class ClipScorer:
    """CLIP image and text embeddings from a CLIPModel + CLIPProcessor folder."""

    def __init__(self, path: str | Path, batch: int = 64):
        from transformers import CLIPModel, CLIPProcessor

        self.path = _check_folder(path, "CLIP model", ["config.json"])
        self.model = CLIPModel.from_pretrained(self.path, local_files_only=True).eval()
        self.processor = CLIPProcessor.from_pretrained(self.path, local_files_only=True)
        self.batch = batch
        self.hash = folder_digest(self.path)

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        def embed(chunk: list[Image.Image]) -> torch.Tensor:
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"]
            return _features(self.model.get_image_features(pixel_values=pixels))

        return _in_batches(_rgb(images), self.batch, embed)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        if not texts:
            raise ValueError("expected at least one text but got none")

        def embed(chunk: list[str]) -> torch.Tensor:
            tokens = self.processor(text=chunk, return_tensors="pt", padding=True, truncation=True)
            features = self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask")
            )
            return _features(features)

        return _in_batches(texts, self.batch, embed)


class DinoScorer:
    """CLS embeddings of a self-supervised ViT (DINO) from an AutoModel + AutoImageProcessor folder."""

    def __init__(self, path: str | Path, batch: int = 64):
        from transformers import AutoImageProcessor, AutoModel

        self.path = _check_folder(path, "DINO model", ["config.json", "preprocessor_config.json"])
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
        self.processor = AutoImageProcessor.from_pretrained(self.path, local_files_only=True)
        self.batch = batch
        self.hash = folder_digest(self.path)

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        def embed(chunk: list[Image.Image]) -> torch.Tensor:
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"]
            # the CLS token of the last layer, as in DreamBooth's DINO metric (not the pooler, which DINO lacks)
            return self.model(pixel_values=pixels).last_hidden_state[:, 0]

        return _in_batches(_rgb(images), self.batch, embed)
