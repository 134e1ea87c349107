"""The pooled projection against the plain SPLADE-max computation, values and gradients."""

import copy

import torch
from transformers import AutoModelForMaskedLM

from pipeline.splade.model import Splade

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
