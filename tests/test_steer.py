"""Stage 1: the knowledge-absence direction (shape, float64, sign), the frozen-activation reconstruction against
a real frozen forward, only down_proj of layer L changing, the forget loss falling, the alternating schedule."""

import copy

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

import asru_min.evaluate
from asru_min.data import QA, qa_batch
from asru_min.hooks import run_to_layer
from asru_min.processor import ImageProcessorConfig, Processor
from asru_min.steer import (
    changed_tensors, forget_loss, frozen_activation, keep_refusals, knowledge_absence_direction,
    load_direction, optimize_steering, retain_loss, save_direction,
)
from conftest import layer_outputs
from test_hooks import ToyLM, tiny_qwen3vl  # a toy decoder with Qwen3VL's attribute paths; the real tiny model


STEER = dict(c=3.0, alpha=1.0, batch_size=2)  # the release's c and alpha; two questions per batch


# ---- a character-level processor for the toy decoder (same methods steer.py calls on the real one)


class ToyProcessor:
    pad_token_id = 0

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return "<" + messages[0]["content"][-1]["text"] + ">"

    def _ids(self, s):
        return [ord(ch) % 64 for ch in s]

    def _pad(self, rows):
        n = max(len(r) for r in rows)
        ids = torch.tensor([[0] * (n - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": None, "image_grid_thw": None}

    def __call__(self, text, images=None):
        return self._pad([self._ids(t) for t in text])

    def encode_sft(self, prompts, answers, images=None):
        return self._pad([self._ids(p + a + "$") for p, a in zip(prompts, answers)])


def _toy_qa(q, a="an answer"):
    return QA(question=q, answer=a, image=None, form="text")


def _uniform_attention_toy():
    """Layer 0: uniform causal attention over real tokens with identity value/output maps and no MLP, so
    h_0[last] = e_last + mean_t e_t. Token 'Z' (id 26) has a huge embedding along u, and every embedding shares a
    large offset (so a float32 running sum would lose digits)."""
    torch.manual_seed(0)
    toy = ToyLM(vocab=64, d=16, f=24, n=2)
    layer = toy.model.language_model.layers[0]
    with torch.no_grad():
        layer.self_attn.q_proj.weight.zero_()
        layer.self_attn.v_proj.weight.copy_(torch.eye(16))
        layer.self_attn.o_proj.weight.copy_(torch.eye(16))
        layer.mlp.down_proj.weight.zero_()
        u = torch.zeros(16)
        u[3] = 1.0
        emb = toy.model.language_model.embed_tokens.weight
        emb.add_(torch.full((16,), 3e3))
        emb[ord("Z") % 64] += 50.0 * u
    return toy.eval(), u


def test_direction_shape_float64_and_sign():
    toy, u = _uniform_attention_toy()
    proc = ToyProcessor()
    positive = [_toy_qa("ZZZ who is Z" + "Z" * i) for i in range(7)]  # many 'Z': big +u component
    negative = [_toy_qa("who is this person " + "ab" * i) for i in range(9)]
    stats = {}
    v = knowledge_absence_direction(toy, proc, positive, negative, layer=0, batch_size=3, stats=stats)
    assert v.shape == (16,) and v.dtype == torch.float64
    assert stats["n_positive"] == 7 and stats["n_negative"] == 9 and stats["layer"] == 0
    assert float(v @ u.double()) > 10 and torch.nn.functional.cosine_similarity(v, u.double(), dim=0) > 0.9
    # equals the difference of float64 means of the per-question activations, each read from a single forward
    def mean64(qas):
        rows = []
        for qa in qas:
            with torch.no_grad(), layer_outputs(toy, 0) as acts:
                toy(**{k: b for k, b in qa_batch(proc, [qa], with_answers=False).items() if k in ("input_ids", "attention_mask")})
            rows.append(acts[0][0, -1])
        return torch.stack(rows).double().mean(0), torch.stack(rows)
    (mp, rows_p), (mn, rows_n) = mean64(positive), mean64(negative)
    torch.testing.assert_close(v, mp - mn, rtol=0, atol=1e-9)
    # the large common offset is what float64 accumulation protects against: a float32 sum drifts visibly
    f32 = rows_p.sum(0) / 7 - rows_n.sum(0) / 9
    assert (f32.double() - (mp - mn)).abs().max() > 10 * (v - (mp - mn)).abs().max()
    # swapping the sets flips the sign exactly
    torch.testing.assert_close(knowledge_absence_direction(toy, proc, negative, positive, layer=0, batch_size=4),
                               -v, rtol=0, atol=1e-9)


def test_direction_save_load(tmp_path):
    v = torch.randn(16, dtype=torch.float64)
    path = str(tmp_path / "dir" / "direction.safetensors")
    save_direction(path, v, {"layer": 1, "n_positive": 3, "model": "weights/"})
    w, meta = load_direction(path)
    assert torch.equal(w, v) and meta["layer"] == 1 and meta["model"] == "weights/" and meta["dim"] == 16
    assert abs(meta["norm"] - float(v.norm())) < 1e-12
    with pytest.raises(FileNotFoundError):
        load_direction(str(tmp_path / "nope.safetensors"))


def test_losses_on_hand_values():
    h = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    hf = torch.zeros(2, 2)
    v = torch.tensor([1.0, 0.0])
    # MSE(h, hf + 2 v) = ((1-2)^2 + 2^2 + (0-2)^2 + 0) / 4
    assert forget_loss(h, hf, v, 2.0).item() == pytest.approx((1 + 4 + 4) / 4)
    H = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [9.0, 9.0]]])  # third position is a pad
    mask = torch.tensor([[1, 1, 0]])
    assert retain_loss(H, torch.zeros_like(H), mask, alpha=0.5).item() == pytest.approx(0.5 * (1 + 1 + 4) / (2 * 2))


def test_schedule_alternates_forget_and_retain_steps():
    torch.manual_seed(0)
    toy, proc = ToyLM(vocab=64, d=16, f=24, n=2).eval(), ToyProcessor()
    forget = [_toy_qa(f"forget {i}") for i in range(6)]  # 3 batches of 2
    retain = [_toy_qa(f"retain {i}", "yes") for i in range(8)]  # 4 batches -> a forget step every 1 iteration
    stats = optimize_steering(toy, proc, forget, retain, torch.randn(16), layer=1, **STEER, lr=1e-3, epochs=1,
                              log_every=0)
    assert "".join(r["kind"][0].upper() for r in stats["log"]) == "FRFRFRR"
    stats = optimize_steering(toy, proc, forget[:2], retain, torch.randn(16), layer=1, **STEER, lr=1e-3, epochs=2,
                              log_every=0)
    assert "".join(r["kind"][0].upper() for r in stats["log"]) == "FRRRR" * 2
    with pytest.raises(ValueError, match="direction shape"):
        optimize_steering(toy, proc, forget, retain, torch.randn(5), layer=1, **STEER, lr=1e-3, epochs=1,
                          log_every=0)


def test_keep_refusals_matches_words(monkeypatch):
    qas = [_toy_qa(str(i)) for i in range(4)]
    texts = ["I do not know.", "I know him well.", "Sorry, I can't say.", "No idea"]
    monkeypatch.setattr(asru_min.evaluate, "answer", lambda model, processor, qs, **kw: texts[: len(qs)])
    kept = keep_refusals(None, None, qas)
    assert [q.question for q in kept] == ["0", "2", "3"]  # "know" does not count as "no"


# ---- the real (tiny, random) Qwen3-VL


def _byte_processor():
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                            "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"])
    return Processor(tok, ImageProcessorConfig(min_pixels=32 * 32, max_pixels=64 * 64))


def _tiny_qwen(proc):
    return tiny_qwen3vl(vocab_size=proc.tokenizer.get_vocab_size(), image_token_id=proc.image_token_id,
                        video_token_id=proc.video_token_id, vision_start_token_id=proc.vision_start_token_id,
                        vision_end_token_id=proc.vision_end_token_id, eos_token_id=proc.eos_token_ids[0])


def _image(seed):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(48, 48, 3, generator=g) * 255).to(torch.uint8).numpy())


def _real_qas():
    forget = [QA(f"What is the job of person {i}?", f"A baker in town {i}.", _image(i) if i % 2 else None)
              for i in range(4)]
    retain = [QA(f"Where does person {i} live?", f"In city number {i}.", _image(10 + i) if i % 3 == 0 else None)
              for i in range(6)]
    return forget, retain


def test_frozen_reconstruction_equals_a_frozen_forward_real_qwen3vl():
    proc = _byte_processor()
    model = _tiny_qwen(proc)
    frozen = copy.deepcopy(model)
    forget, retain = _real_qas()
    layer = 1
    batch = qa_batch(proc, retain[:4])  # mixed image / text rows, left padding
    # the truncated forward returns what a full forward's hook reads
    with torch.no_grad(), layer_outputs(model, layer) as full:
        model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")})
    h, a = run_to_layer(model, batch, layer)
    torch.testing.assert_close(h, full[0], rtol=0, atol=0)
    assert a.shape == (*h.shape[:2], 48)

    W = model.model.language_model.layers[layer].mlp.down_proj.weight
    W0 = W.detach().clone()
    with torch.no_grad():
        W.add_(0.3 * torch.randn_like(W))
    h_upd, a_upd = run_to_layer(model, batch, layer)
    h_true, _ = run_to_layer(frozen, batch, layer)
    assert (h_upd - h_true).abs().max() > 0.1  # the update really moved the activations
    torch.testing.assert_close(frozen_activation(h_upd, a_upd, W, W0), h_true, rtol=0, atol=1e-5)


def test_optimisation_changes_only_down_proj_and_forget_loss_falls_real_qwen3vl():
    proc = _byte_processor()
    model = _tiny_qwen(proc)
    forget, retain = _real_qas()
    layer = 1
    v = knowledge_absence_direction(model, proc, retain, forget, layer, batch_size=4)
    before = {k: t.clone() for k, t in model.state_dict().items()}
    grads_before = {n: p.requires_grad for n, p in model.named_parameters()}

    def loss_now():
        h, a = run_to_layer(model, qa_batch(proc, forget, with_answers=False), layer)
        W = model.model.language_model.layers[layer].mlp.down_proj.weight
        W0 = before[f"model.language_model.layers.{layer}.mlp.down_proj.weight"]
        return forget_loss(h[:, -1], frozen_activation(h, a, W, W0)[:, -1], v, 3.0).item()

    start = loss_now()
    stats = optimize_steering(model, proc, forget, retain, v, layer, c=3.0, alpha=1.0, lr=3e-2, batch_size=2,
                              epochs=3, seed=0, log_every=0)
    name = "model.language_model.layers.1.mlp.down_proj.weight"
    changed = [k for k, t in model.state_dict().items() if not torch.equal(t, before[k])]
    assert changed == [name]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads_before  # flags restored
    fl = stats["forget_loss"]
    assert len(fl) == 6 and len(stats["retain_loss"]) == 9  # 2 forget + 3 retain batches per epoch, 3 epochs
    assert all(b < a for a, b in zip(fl, fl[1:]))  # falls at every forget step
    assert fl[-1] < 0.2 * fl[0] and loss_now() < 0.2 * start
    out = changed_tensors(model, stats["original"])
    assert list(out) == [name] and torch.equal(out[name], model.state_dict()[name])


def test_bf16_model_steers_like_float32_through_a_master_copy():
    proc = ToyProcessor()
    forget = [_toy_qa(f"forget {i}") for i in range(4)]
    retain = [_toy_qa(f"retain {i}", "yes") for i in range(4)]
    deltas = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        toy = ToyLM(vocab=64, d=16, f=24, n=2).eval()
        torch.manual_seed(1)
        v = torch.randn(16)
        toy = toy.to(dtype)
        W = toy.model.language_model.layers[1].mlp.down_proj.weight
        W0 = W.detach().float().clone()
        optimize_steering(toy, proc, forget, retain, v, layer=1, **STEER, lr=1e-4, epochs=2, log_every=0)
        assert W.dtype == dtype
        deltas[dtype] = W.detach().float() - W0
    cos = torch.nn.functional.cosine_similarity(deltas[torch.float32].flatten(), deltas[torch.bfloat16].flatten(),
                                                dim=0)
    ratio = deltas[torch.bfloat16].norm() / deltas[torch.float32].norm()
    assert cos > 0.9 and 0.7 < ratio < 1.3


def test_steering_schedule_interleaves_forget_batches_and_covers_both_sets():
    import random

    from asru_min.steer import steering_schedule

    steps = list(steering_schedule(n_forget=4, n_retain=12, batch_size=2, epochs=2, rng=random.Random(0)))
    kinds = "".join(kind[0] for epoch, kind, _ in steps if epoch == 0)
    assert kinds == "frrrfrrr"  # 6 retain batches, 2 forget batches: one forget step every 3 iterations
    for epoch in (0, 1):
        for kind, n in (("forget", 4), ("retain", 12)):
            assert sorted(i for e, k, idx in steps if (e, k) == (epoch, kind) for i in idx) == list(range(n))
    assert [idx for e, _, idx in steps if e == 0] != [idx for e, _, idx in steps if e == 1]  # reshuffled


def test_training_only_trains_w_alone_and_restores_even_on_error():
    from asru_min.steer import training_only

    toy = ToyLM(vocab=64, d=16, f=24, n=2).train()
    W = toy.model.language_model.layers[1].mlp.down_proj.weight
    toy.model.language_model.layers[0].requires_grad_(False)  # mixed flags to restore
    flags = {n: p.requires_grad for n, p in toy.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"):
        with training_only(toy, W) as master:
            trainable = [p for p in toy.parameters() if p.requires_grad]
            assert master is W and len(trainable) == 1 and trainable[0] is W
            assert not any(m.training for m in toy.modules())
            W.grad = torch.ones_like(W)
            raise RuntimeError("boom")
    assert {n: p.requires_grad for n, p in toy.named_parameters()} == flags
    assert all(m.training for m in toy.modules()) and W.grad is None
    toy.bfloat16()
    with training_only(toy, W) as master:  # a bf16 weight trains through a float32 master copy
        assert master is not W and master.dtype == torch.float32 and torch.equal(master, W.float())
