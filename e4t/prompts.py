"""Prompts that name concepts in braces, and their encoding with concept embeddings spliced in.

`a photo of {c_1a2b3c4d5e6f} on the beach`: each braced name takes one token slot whose
embedding is the concept's own. The tokenizer and text encoder are only read, never
extended with new tokens, so concurrent requests cannot interfere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from transformers.masking_utils import create_causal_mask

from e4t.errors import InvalidInput

_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
CONCEPT_ID = re.compile(r"^c_[0-9a-f]{12}$")


def find_concept_ids(prompt: str) -> list[str]:
    """Names in braces, in order of first appearance, without repeats."""
    return list(dict.fromkeys(_NAME.findall(prompt)))


def add_suffixes(prompt: str, suffixes: Mapping[str, str]) -> str:
    """`{name}` -> `{name} suffix` for each named concept that carries one, unless the prompt already says it.

    DreamBooth concepts are bound to "[V] <class word>": "a photo of {c_1a2b3c4d5e6f} on the beach"
    becomes "a photo of {c_1a2b3c4d5e6f} face on the beach", as it was tuned.
    """
    for name, suffix in suffixes.items():
        if suffix:
            already = r"(?!\s+" + re.escape(suffix) + r"\b)"
            named = re.compile(r"\{" + re.escape(name) + r"\}" + already)
            prompt = named.sub(lambda m, s=suffix: f"{m.group(0)} {s}", prompt)
    return prompt


def class_word_prompt(prompt: str, class_words: Mapping[str, str], suffixes: Mapping[str, str]) -> str:
    """`prompt` with each named concept (and the suffix a prompt may already give it) replaced by "a <class word>".

    "a photo of {c_1a2b3c4d5e6f} on the beach" -> "a photo of a face on the beach": the same scene
    without the subject's identity, which identity guidance (`e4t.generate`) steers away from.
    """
    for name, word in class_words.items():
        suffix = suffixes.get(name, "")
        after = r"(?:\s+" + re.escape(suffix) + r"\b)?" if suffix else ""
        prompt = re.sub(r"\{" + re.escape(name) + r"\}" + after, lambda m, w=word: f"a {w}", prompt)
    return prompt


def tokenize_with_slots(tokenizer, prompt: str, slot_token_id: int) -> tuple[list[int], list[tuple[int, str]]]:
    """Token ids of `prompt` padded to the tokenizer's length, with one placeholder per braced name.

    Returns the ids and the (position, name) of every slot. Raises InvalidInput when too long.
    """
    ids: list[int] = [tokenizer.bos_token_id]
    slots: list[tuple[int, str]] = []
    pieces = _NAME.split(prompt)  # text, name, text, name, ..., text
    for i, piece in enumerate(pieces):
        if i % 2:
            slots.append((len(ids), piece))
            ids.append(slot_token_id)
        elif piece.strip():
            ids.extend(tokenizer(piece.strip(), add_special_tokens=False).input_ids)
    ids.append(tokenizer.eos_token_id)
    limit = tokenizer.model_max_length
    if len(ids) > limit:
        raise InvalidInput(f"prompt is {len(ids)} tokens long with its start and end tokens; the limit is {limit}")
    ids += [tokenizer.pad_token_id] * (limit - len(ids))
    return ids, slots


def text_model(text_encoder):
    """The CLIP text transformer, whichever way transformers nests it."""
    return getattr(text_encoder, "text_model", text_encoder)


def word_embedding(text_encoder, tokenizer, word: str) -> torch.Tensor:
    """Mean input embedding of the tokens of `word` (one token for the usual class words)."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    table = text_model(text_encoder).embeddings.token_embedding.weight
    return table[ids].mean(0)


def encode_prompts(
    text_encoder,
    tokenizer,
    prompts: Sequence[str],
    embeddings: Sequence[Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """Hidden states [B, L, D] of `prompts`, each braced name replaced by its embedding.

    `embeddings` is one name->vector mapping for all prompts, or one per prompt. Gradients
    flow into the embeddings (tuning and pretraining use this) but not into the text encoder
    unless its parameters require them.
    """
    if isinstance(embeddings, Mapping):
        embeddings = [embeddings] * len(prompts)
    tm = text_model(text_encoder)
    table = tm.embeddings.token_embedding
    slot_id = tokenizer.eos_token_id
    rows, all_slots = [], []
    for prompt, names in zip(prompts, embeddings):
        ids, slots = tokenize_with_slots(tokenizer, prompt, slot_id)
        missing = [n for _, n in slots if n not in names]
        if missing:
            raise InvalidInput(
                f"prompt names {', '.join('{' + n + '}' for n in missing)} but no embedding was given for it"
            )
        rows.append(ids)
        all_slots.append(slots)
    input_ids = torch.tensor(rows, device=table.weight.device)
    token_embeds = table(input_ids)
    if any(all_slots):
        index = torch.tensor(
            [[b, pos] for b, slots in enumerate(all_slots) for pos, _ in slots], device=input_ids.device
        )
        values = torch.stack([embeddings[b][name] for b, slots in enumerate(all_slots) for _, name in slots])
        token_embeds = token_embeds.index_put((index[:, 0], index[:, 1]), values.to(token_embeds.dtype))
    return _run_text_transformer(tm, token_embeds)


def _run_text_transformer(tm, token_embeds: torch.Tensor) -> torch.Tensor:
    # Same computation as CLIPTextModel.forward, entered after the token lookup so that
    # spliced embeddings take part; tests check it matches the stock forward exactly.
    hidden = tm.embeddings(inputs_embeds=token_embeds)
    mask = create_causal_mask(config=tm.config, inputs_embeds=hidden, attention_mask=None, past_key_values=None)
    out = tm.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True)
    return tm.final_layer_norm(out.last_hidden_state)
