"""The contrastive text stage learns to tell captions apart by what their images show."""

from __future__ import annotations

from pathlib import Path

import torch

from pretrain.arch import TINY, train_tokenizer
from pretrain.text_tower import build_clip, contrastive_loss

COLOURS = ("red", "blue", "green", "black")


def test_contrastive_training_separates_the_words_that_images_show(tmp_path: Path) -> None:
    torch.manual_seed(0)
    captions = [f"a photo of a face with {c} hair" for c in COLOURS]
    tokenizer = train_tokenizer(captions * 4, tmp_path / "tok", TINY)
    model = build_clip(TINY, tokenizer)
    size = TINY.latent_size
    # each colour is one fixed latent pattern (plus noise): the word is all that tells the captions apart
    patterns = torch.randn(len(COLOURS), TINY.latent_channels, size, size)
    tokens = tokenizer(captions, padding="max_length", max_length=TINY.max_tokens, return_tensors="pt").input_ids
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        which = torch.randint(len(COLOURS), (n,))
        return tokens[which], patterns[which] + 0.3 * torch.randn(n, *patterns.shape[1:]), [captions[i] for i in which]

    fixed = batch(32)
    # equal captions are all positives, so the loss cannot go below the entropy of those targets
    floor = torch.tensor([float(fixed[2].count(c)) for c in fixed[2]]).log().mean()
    with torch.no_grad():
        before, _ = contrastive_loss(model, *fixed)
    for _ in range(60):
        loss, _ = contrastive_loss(model, *batch(32))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after, _ = contrastive_loss(model, *fixed)
        text = torch.nn.functional.normalize(model.get_text_features(input_ids=tokens).pooler_output, dim=-1)
        image = torch.nn.functional.normalize(model.get_image_features(pixel_values=patterns).pooler_output, dim=-1)
    assert after - floor < 0.2 * (before - floor), (before, after, floor)
    # every colour's image now picks its own caption among the four
    assert torch.equal((image @ text.T).argmax(1), torch.arange(len(COLOURS)))
    # and the text encoder's output states tell the colours apart, which the UNet reads
    states = torch.nn.functional.normalize(model.text_model(tokens).last_hidden_state[:, -1], dim=-1)
    off_diagonal = (states @ states.T)[~torch.eye(len(COLOURS), dtype=torch.bool)]
    assert off_diagonal.max() < 0.95
