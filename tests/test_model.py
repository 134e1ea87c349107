"""The pooled projection against the plain SPLADE-max computation, values and gradients."""

import copy

import torch
from transformers import AutoModelForMaskedLM

from pipeline.splade.model import Splade, SpladeEncoder

from test_rescale import TINY


def reference(model: Splade, input_ids, attention_mask):
    """SPLADE-max as written: log(1 + relu(logits)) of every token, masked, max over tokens."""
    logits = model.mlm(input_ids=input_ids, attention_mask=attention_mask).logits
    return (torch.log1p(torch.relu(logits)) * attention_mask.unsqueeze(-1)).amax(dim=1)


def test_values_and_gradients_match_the_reference():
    torch.manual_seed(0)
    model = Splade(AutoModelForMaskedLM.from_config(copy.deepcopy(TINY["bert"]))).double().eval()  # no dropout
    with torch.no_grad():
        model.head.decoder.bias.add_(0.5)  # many terms active, so many carry gradient
        # The [PAD] row starts at zero: its logit ties on every token, where amax splits the gradient
        # and the pooled projection gives it to one arg-max token (both are subgradients).
        model.mlm.get_input_embeddings().weight[0].normal_(std=0.02)
    input_ids = torch.randint(1000, 30000, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    attention_mask[2, 3:] = 0
    probe = torch.rand(3, model.vocab_size, dtype=torch.float64)

    ours = model(input_ids, attention_mask)
    (ours * probe).sum().backward()
    ours_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    theirs = reference(model, input_ids, attention_mask)
    (theirs * probe).sum().backward()

    torch.testing.assert_close(ours, theirs)
    assert (ours > 0).sum() > 1000
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(ours_grads[name], p.grad, msg=name)


TEXTS = ["Glaciers are slow rivers of ice that carve valleys in mountains. " * 30, "hi", "",
         "Caffeine in coffee stimulates the central nervous system.", "naïve café — 東京 🙂"]


def test_batches_are_what_the_tokenizer_gives(encoder):
    """The Rust tokenizer called directly gives the ids and mask of `tokenizer(...)`, on either padding side,
    counts the texts it cut, and works on copies of it (another thread may be using the tokenizer)."""
    from pipeline.splade.model import SpladeEncoder

    for padding_side in ("right", "left"):
        tokenizer = copy.deepcopy(encoder.tokenizer)
        tokenizer.padding_side = padding_side
        ours = SpladeEncoder(encoder.model, tokenizer, encoder.device)
        for max_length in (8, 64, 512):
            batch, truncated = ours.host_batch(TEXTS, max_length)
            expected = tokenizer(TEXTS, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            assert torch.equal(batch["input_ids"], expected["input_ids"])
            assert torch.equal(batch["attention_mask"], expected["attention_mask"])
            assert truncated == sum(len(ids) > max_length for ids in tokenizer(TEXTS)["input_ids"])
        assert len(ours._backends) == 3 and all(b is not tokenizer.backend_tokenizer for b in ours._backends.values())


def test_a_bf16_body_feeds_its_states_to_the_exact_projection(model_path):
    """--body-precision bf16: the transformer layers under bf16 autocast, and the weights exactly the
    SPLADE-max of the states they give (close to, not equal to, the fp32 model's)."""
    fast = SpladeEncoder.load(model_path, device="cpu", body_precision="bf16")
    exact = SpladeEncoder.load(model_path, device="cpu")
    batch, _ = fast.tokenize(["a short text", "sparse retrieval with learned term weights, " * 8], 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        states = fast.model.hidden_states(batch["input_ids"], batch["attention_mask"])
    with torch.inference_mode():
        logits = fast.model.head.decoder(fast.model.head.transform(states.float()))
        expected = torch.log1p(torch.relu(logits.masked_fill(~batch["attention_mask"].bool()[..., None], -torch.inf).amax(dim=1)))
    ours = fast.weights(batch)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    fp32 = exact.weights(batch)
    assert not torch.equal(ours, fp32) and (ours - fp32).abs().max() < 0.5
