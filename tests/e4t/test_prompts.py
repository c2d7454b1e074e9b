import pytest
import torch

from e4t import load_base
from e4t.errors import InvalidInput
from e4t.prompts import class_word_prompt, encode_prompts, find_concept_ids, tokenize_with_slots, word_embedding


@pytest.fixture(scope="module")
def base(tiny_base_dir):
    return load_base(tiny_base_dir)


def test_find_concept_ids_in_order_without_repeats():
    assert find_concept_ids("a {c_1a2b3c4d5e6f} next to {c_ffffffffffff} and {c_1a2b3c4d5e6f}") == [
        "c_1a2b3c4d5e6f",
        "c_ffffffffffff",
    ]
    assert find_concept_ids("a photo of a face") == []


def test_class_word_prompt_replaces_each_concept_and_its_suffix():
    a, b = "c_0123456789ab", "c_ba9876543210"
    words = {a: "face", b: "cat"}
    assert class_word_prompt(f"a photo of {{{a}}} on the beach", words, {}) == "a photo of a face on the beach"
    # a DreamBooth concept's suffix goes with it, whether the prompt spells it out or not
    assert class_word_prompt(f"{{{a}}} face next to {{{b}}}", words, {a: "face"}) == "a face next to a cat"
    assert class_word_prompt(f"{{{a}}} next to {{{b}}}", words, {a: "face"}) == "a face next to a cat"
    assert class_word_prompt(f"{{{a}}} faces", words, {a: "face"}) == "a face faces"  # a word, not a prefix


def test_encoding_matches_the_stock_text_encoder(base):
    prompt = "a sketch of a face in the snow"
    ids = base.tokenizer([prompt], padding="max_length", return_tensors="pt").input_ids
    reference = base.text_encoder(ids).last_hidden_state
    assert torch.equal(encode_prompts(base.text_encoder, base.tokenizer, [prompt], {}), reference)


def test_a_slot_carrying_the_class_word_equals_the_class_word(base):
    face = word_embedding(base.text_encoder, base.tokenizer, "face")
    plain = encode_prompts(base.text_encoder, base.tokenizer, ["a photo of a face at night"], {})
    slotted = encode_prompts(base.text_encoder, base.tokenizer, ["a photo of a {S} at night"], {"S": face})
    assert torch.allclose(plain, slotted)


def test_each_prompt_gets_its_own_embeddings_and_gradients_flow(base):
    e1 = torch.randn(base.text_encoder.get_input_embeddings().weight.shape[1], requires_grad=True)
    e2 = torch.randn_like(e1)
    out = encode_prompts(base.text_encoder, base.tokenizer, ["{S} on the beach"] * 2, [{"S": e1}, {"S": e2}])
    assert not torch.allclose(out[0], out[1])
    out[0].sum().backward()
    assert e1.grad is not None and e1.grad.abs().sum() > 0


def test_overlong_and_unnamed_prompts_are_rejected(base):
    with pytest.raises(InvalidInput, match="tokens long"):
        encode_prompts(base.text_encoder, base.tokenizer, ["face " * 100], {})
    with pytest.raises(InvalidInput, match="no embedding"):
        encode_prompts(base.text_encoder, base.tokenizer, ["a photo of {c_000000000000}"], {})


def test_slots_are_single_tokens(base):
    ids, slots = tokenize_with_slots(base.tokenizer, "a {x} and a {y}", slot_token_id=7)
    assert [ids[p] for p, _ in slots] == [7, 7] and [n for _, n in slots] == ["x", "y"]
    assert len(ids) == base.tokenizer.model_max_length
