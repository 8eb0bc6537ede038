"""The memory rewrites of the shared training pieces are exact: chunked log-probs == one-piece log-probs (values
and gradients), checkpointed layers == plain layers (gradients; hooks still see each layer once), accumulated
micro-batch losses == the one-piece loss (one guarded optimiser step)."""

import copy
import warnings

import pytest
import torch

from asru_min.hooks import run_to_layer
from asru_min.lora import LoRALinear, apply_lora, lora_modules, lora_parameters
from asru_min.optim import grad_checkpoint_enabled, gradient_checkpointing, optimizer_step, token_logprobs
from conftest import layer_outputs
from test_hooks import tiny_qwen3vl

V = 64  # tiny_qwen3vl's vocabulary


def adapted_model(dropout: float = 0.0, vision: bool = False):
    """tiny_qwen3vl with LoRA on every text linear map (and, wrapped by hand, every linear map of the vision
    tower), B random so gradients reach A."""
    model = tiny_qwen3vl()
    apply_lora(model, r=4, alpha=8, dropout=dropout)
    if vision:
        for name, m in list(model.model.visual.named_modules()):
            if type(m) is torch.nn.Linear:
                parent, _, leaf = name.rpartition(".")
                setattr(model.model.visual.get_submodule(parent), leaf, LoRALinear.from_linear(m, 4, 8, dropout))
    torch.manual_seed(1)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.weight.normal_(0.0, 0.05)
    return model


def ragged_batch():
    """Three rows [left pads | prompt | answer | right pads]; targets = the answer tokens (17 of them)."""
    torch.manual_seed(2)
    ids = torch.randint(0, 59, (3, 14))
    att = torch.ones_like(ids)
    att[0, :3] = 0
    att[1, -2:] = 0
    target = torch.zeros_like(ids, dtype=torch.bool)
    target[0, 7:] = True
    target[1, 5:12] = True
    target[2, 11:] = True
    return {"input_ids": ids, "attention_mask": att}, target


def grads(params):
    return [p.grad.detach().clone() for p in params]


def assert_same_gradients(got: list, expected: list, tol: float = 1e-6):
    """Each gradient within tol of the expected one, relative to its largest entry (at least 1): float32 sums
    taken in another order differ by a few ulps of the largest terms (here gradients reach ~4)."""
    for g, e in zip(got, expected, strict=True):
        assert (g - e).abs().max() <= tol * max(1.0, e.abs().max().item()), (g - e).abs().max()


# ---------------------------------------------------------------------------------------------- chunked log-probs


@pytest.mark.parametrize("chunk", [1, 3, 5, 16, 17, 1000])
def test_chunked_logprobs_equal_one_piece_values_and_gradients(chunk):
    model = adapted_model()
    model.lm_head.weight.requires_grad_(True)  # full fine-tuning of the head must get its gradient too
    params = lora_parameters(model) + [model.lm_head.weight]
    batch, target = ragged_batch()
    weight = torch.randn(3, 14)  # any loss of the log-probs

    def run(chunk_tokens):
        model.zero_grad(set_to_none=True)
        logp = token_logprobs(model, batch, target, temperature=1.5, chunk_tokens=chunk_tokens)
        (logp * weight).sum().backward()
        return logp.detach(), grads(params)

    whole, whole_grads = run(0)
    got, got_grads = run(chunk)
    assert int((whole != 0).sum()) == 17 and torch.equal(whole[~target], torch.zeros(int((~target).sum())))
    torch.testing.assert_close(got, whole, rtol=0, atol=1e-6)
    assert_same_gradients(got_grads, whole_grads)


def test_chunked_logprobs_keep_at_most_one_chunk_of_logits():
    """Autograd stores no (n, V) logits for backward when chunked (each chunk is recomputed), all of them when
    not; recorded through saved-tensor hooks."""
    model = adapted_model()
    batch, target = ragged_batch()

    def largest_saved_logits(chunk_tokens) -> int:
        sizes = [0]

        def pack(t):
            if t.dim() >= 1 and t.shape[-1] == V:
                sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logp = token_logprobs(model, batch, target, chunk_tokens=chunk_tokens)
        logp.sum().backward()
        return max(sizes)

    assert largest_saved_logits(0) >= 17 * V
    assert largest_saved_logits(4) <= 4 * V


# ---------------------------------------------------------------------------------------------- checkpointing


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_checkpointed_layers_give_the_plain_gradients(dropout):
    """Decoder layers and vision blocks checkpointed == plain: same loss, same LoRA gradients (with dropout too:
    the recomputation replays the RNG). Checkpointing also stores fewer tensors for backward."""
    model = adapted_model(dropout=dropout, vision=True).train()
    params = lora_parameters(model)
    ids = torch.randint(0, 59, (2, 9))
    ids[:, 2:6] = 60  # four image placeholders per row: two 4x4-patch images merge into 4 tokens each
    pixels = torch.randn(32, 3 * 2 * 16 * 16)
    grid = torch.tensor([[1, 4, 4], [1, 4, 4]])

    def run(on: bool):
        model.zero_grad(set_to_none=True)
        saved = [0]

        def pack(t):
            saved[0] += 1
            return t

        torch.manual_seed(3)
        with gradient_checkpointing(model, on), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = model(ids, pixel_values=pixels, image_grid_thw=grid)
        logits.float().logsumexp(-1).mean().backward()
        return logits.detach(), grads(params), saved[0]

    plain, plain_grads, plain_saved = run(False)
    ckpt, ckpt_grads, ckpt_saved = run(True)
    torch.testing.assert_close(ckpt, plain, rtol=0, atol=1e-6)
    assert_same_gradients(ckpt_grads, plain_grads)
    assert ckpt_saved < plain_saved / 2
    assert not model.model.language_model.grad_checkpoint and not model.model.visual.grad_checkpoint  # reset


def test_hooked_layer_runs_once_under_checkpointing():
    """Stage 1's truncated forward (run_to_layer) and a reading hook see their layer exactly once although
    checkpointing is on: a hooked layer runs plain (the unhooked ones are checkpointed), with the plain gradient."""
    model = adapted_model()
    params = lora_parameters(model)
    batch, _ = ragged_batch()
    layer = model.model.language_model.layers[1]
    calls = [0]

    def count(mod, args):
        calls[0] += 1

    def stage1_like(on: bool):
        model.zero_grad(set_to_none=True)
        calls[0] = 0
        handle = layer.mlp.down_proj.register_forward_pre_hook(count)
        try:
            with gradient_checkpointing(model, on):
                h, _ = run_to_layer(model, batch, 1, grad=True)
                h.float().pow(2).mean().backward()
        finally:
            handle.remove()
        return calls[0], grads(params[: 2 * 7 * 2])  # the adapters of layers 0 and 1

    (n_ckpt, g_ckpt), (n_plain, g_plain) = stage1_like(True), stage1_like(False)
    assert n_ckpt == n_plain == 1
    assert_same_gradients(g_ckpt, g_plain)

    def read_through(on: bool):  # a full forward reading layer 1 with its graph; layers 0 and 2 checkpointed
        model.zero_grad(set_to_none=True)
        with gradient_checkpointing(model, on), layer_outputs(model, 1) as acts:
            logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
            (logits.float().logsumexp(-1).mean() + acts[0].float().pow(2).mean()).backward()
            assert len(acts) == 1
        return grads(params)

    assert_same_gradients(read_through(True), read_through(False))


def test_grad_checkpoint_setting():
    assert grad_checkpoint_enabled("auto", "cuda") and not grad_checkpoint_enabled("auto", "cpu")
    assert grad_checkpoint_enabled("on", "cpu") and not grad_checkpoint_enabled("off", "cuda:0")
    with pytest.raises(ValueError, match="grad_checkpoint"):
        grad_checkpoint_enabled("yes", "cpu")


# ---------------------------------------------------------------------------------------------- accumulation


def test_accumulated_micro_batch_losses_take_the_one_piece_step():
    """optimizer_step over micro-batch losses (each a share of the one-piece loss) == over the one-piece loss:
    same parameters after a clipped AdamW step; a non-finite piece skips the whole step and leaves nothing."""
    torch.manual_seed(0)
    x, y = torch.randn(10, 4), torch.randn(10)
    one = torch.nn.Linear(4, 1)
    acc = copy.deepcopy(one)

    def step(model, pieces, corrupt=None):
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)

        def losses():
            for i, rows in enumerate(pieces):
                part = (model(x[rows]).squeeze(-1) - y[rows]).pow(2).sum() / len(x)  # normalised by all 10 rows
                yield part * float("nan") if i == corrupt else part

        return optimizer_step(losses(), list(model.parameters()), opt, grad_clip=0.5), opt

    assert step(one, [list(range(10))])[0]
    assert step(acc, [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]])[0]
    for a, b in zip(acc.parameters(), one.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    before = [p.detach().clone() for p in acc.parameters()]
    with pytest.warns(UserWarning, match="non-finite"):
        done, opt = step(acc, [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]], corrupt=1)
    assert not done and not opt.state
    assert all(torch.equal(b, p) and p.grad is None for b, p in zip(before, acc.parameters()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert step(acc, [[0, 1], [2, 3, 4, 5, 6, 7, 8, 9]])[0]


def test_eval_and_train_mode_restore_each_module_even_on_error():
    """eval_mode / train_mode switch every submodule and give each its own previous mode back, also when the
    block raises (a model left in train mode would answer with dropout)."""
    from torch import nn

    from asru_min.optim import eval_mode, train_mode

    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.Sequential(nn.Dropout(0.5)))
    model.train()
    model[2].eval()  # mixed modes
    modes = [m.training for m in model.modules()]
    assert modes == [True, True, True, False, False]
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == modes
    with train_mode(model):
        assert all(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == modes


def test_shuffled_batches_and_derived_seeds():
    import random

    from asru_min.optim import derived_seed, shuffled_batches

    batches = shuffled_batches(10, 4, random.Random(3))
    assert [len(b) for b in batches] == [4, 4, 2] and sorted(sum(batches, [])) == list(range(10))
    assert batches == shuffled_batches(10, 4, random.Random(3)) != shuffled_batches(10, 4, random.Random(4))
    assert derived_seed(7) == 7 and derived_seed(7, 4, base=1000) == 7004
    assert derived_seed(7, 2, 5) == (7 * 1_000_003 + 2) * 1_000_003 + 5
    assert len({derived_seed(1, step, i) for step in range(20) for i in range(20)}) == 400
