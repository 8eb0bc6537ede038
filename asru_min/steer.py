"""ASRU stage 1: the knowledge-absence direction and activation-steering optimisation (docs/METHOD.md, stage 1).

1. Direction. Read the residual stream after text-decoder layer L at the last prompt token (index -1 with left
   padding) on questions the model cannot know (positive: unseen people, private facts, answered with a refusal)
   and on forget-set questions (negative: no answer appended; the vanilla model answers them from memory):
       v = mean(positive) - mean(negative)                      (accumulated in float64, not normalised)
2. Steering optimisation (RMU-style redirect; the change ends up in the weights). Train only layer L's
   `mlp.down_proj.weight` W so that
       forget:  h_L(x_f)[last] -> h_L^frozen(x_f)[last] + c v      (the forget prompts now "look unknown")
       retain:  h_L(x_r)       -> h_L^frozen(x_r)                   (nothing else moves)
   No refusal text is ever trained on: the refusal comes from the redirected activations.

The frozen reference costs no second model: only W changes and everything before it is frozen, so the input `a` of
down_proj and every other term of layer L's output h = h_in + attn + a W^T are the same in the updated and the
frozen model, hence
       h_frozen = h_updated - a (W - W0)^T          (`a` captured by a hook in the same forward, W0 a copy of W)
The forward stops right after layer L (hooks.run_to_layer): later layers cannot change h_L.

Where the release differs (docs/METHOD.md, 1b), each has a switch: the release reads both losses at index -1 of a
right-padded question + answer batch (`right_padded`; forget_position / retain_position "release"), where this
project reads the forget loss at the last prompt token and the retain loss over every real token; the release
keeps positives whose answer contains "not" / "no" / "sorry" as a plain substring (`draw_refused`: "no" also
inside "know"), this project as whole words (`keep_refusals`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
import warnings
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from .data import QA, qa_batch
from .distributed import write_atomic
from .hooks import decoder_layer, run_to_layer
from .optim import eval_mode, optimizer_step, shuffled_batches, temporarily

REFUSAL_WORDS = re.compile(r"\b(not|no|sorry)\b", re.IGNORECASE)


@torch.no_grad()
def mean_last_token_activation(model: nn.Module, processor, qas: list, layer: int, batch_size: int = 8):
    """mean_i h_L(x_i)[last prompt token], summed in float64 (a float32 running sum of thousands of activations
    with large common components loses the small difference we are after). Returns (mean (D,), n)."""
    if not qas:
        raise ValueError("no questions to average over")
    total, n = None, 0
    for s in range(0, len(qas), batch_size):
        batch = qa_batch(processor, qas[s : s + batch_size], with_answers=False, device=model.device)
        h, _ = run_to_layer(model, batch, layer)
        last = h[:, -1].to(torch.float64)  # (B, D): left padding puts every row's last prompt token at -1
        total = last.sum(0) if total is None else total + last.sum(0)
        n += last.shape[0]
    return total / n, n


def keep_refusals(model: nn.Module, processor, qas: list, batch_size: int = 8, max_new_tokens: int = 32) -> list:
    """The questions whose greedy answer contains the word "not", "no" or "sorry" (the release's positive-set
    filter: keep only prompts the model really answers with ignorance)."""
    from .evaluate import answer

    answers = answer(model, processor, qas, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return [qa for qa, text in zip(qas, answers) if REFUSAL_WORDS.search(text)]


def release_refused(text: str) -> bool:
    """The release's positive filter: "not", "no" or "sorry" anywhere in the lower-cased answer."""
    low = text.lower()
    return "not" in low or "no" in low or "sorry" in low


def draw_refused(model: nn.Module, processor, candidates: list, n: int, batch_size: int = 8,
                 max_new_tokens: int = 128) -> list:
    """The release's positive draw: answer `candidates` greedily in order, one batch at a time (up to 128 new
    tokens, as the release), keeping the questions whose answer passes `release_refused`, until n are kept (fewer
    when the candidates run out)."""
    from .evaluate import answer

    kept = []
    for s in range(0, len(candidates), batch_size):
        if len(kept) >= n:
            break
        chunk = candidates[s : s + batch_size]
        texts = answer(model, processor, chunk, batch_size=batch_size, max_new_tokens=max_new_tokens)
        kept += [qa for qa, text in zip(chunk, texts) if release_refused(text)]
    return kept[:n]


# --- the positives drawn for a benchmark without unknown / private questions (docs/METHOD.md, 1a)
POSITIVE_SUFFIX = " if you do not know, describe the image."
POSITIVE_QUESTIONS = ("What is the phone number of the person in this image?",
                      "On which exact date was the person in this image born?",
                      "How tall is the person in this image?",
                      "Where does the person in this image live now?",
                      "What is the occupation of the father of the person in this image?",
                      "What does the father of the person in this image do for work?")


def image_key(img: Image.Image) -> str:
    """A key equal for equal pixels (an image of an evaluated split must never be a positive)."""
    return hashlib.sha1(img.tobytes() + str(img.size).encode()).hexdigest()


def _positive_faces(n: int, seed: int, folder: str | None, avoid: set) -> list:
    """n faces: the readable images of `folder` (name order), or portraits of fresh looks drawn by the synthetic
    world's generator. None may equal an image in `avoid` (keys of `image_key`)."""
    if folder:
        files = sorted(p for p in Path(folder).iterdir() if p.is_file()) if Path(folder).is_dir() else []
        faces = []
        for p in files:
            if len(faces) == n:
                break
            try:
                img = Image.open(p).convert("RGB")
            except Exception:
                continue
            if image_key(img) in avoid:
                raise ValueError(f"--positives: {p} is also an image of an evaluated split")
            faces.append(img)
        if not faces:
            raise ValueError(f"--positives {folder}: no readable image")
        if len(faces) < n:
            warnings.warn(f"--positives {folder}: {len(faces)} readable images, fewer than --positive-size {n}")
        return faces
    from .world.portraits import stranger_portrait

    rng, faces = random.Random(f"{seed}/positives"), []
    while len(faces) < n:
        img = stranger_portrait(rng)
        if image_key(img) not in avoid:
            faces.append(img)
    return faces


def positive_questions(n: int, seed: int = 0, folder: str | None = None, avoid_splits: dict | None = None) -> list:
    """The release's stage-1 positives: n unseen faces (`_positive_faces`), each with a random private-information
    question + POSITIVE_SUFFIX, kind "unknown". Faces of `avoid_splits` are never used."""
    unique = {id(im): im for qas in (avoid_splits or {}).values() for qa in qas for im in qa.images()}
    avoid = {image_key(im) for im in unique.values()}
    rng = random.Random(f"{seed}/positive-questions")
    return [QA(question=rng.choice(POSITIVE_QUESTIONS) + POSITIVE_SUFFIX, answer="", image=img, kind="unknown",
               form="image") for img in _positive_faces(n, seed, folder, avoid)]


def knowledge_absence_direction(model: nn.Module, processor, positive_qas: list, negative_qas: list, layer: int,
                                batch_size: int = 8, negative_model: nn.Module | None = None,
                                stats: dict | None = None) -> torch.Tensor:
    """v = mean_{x in positive} h_L(x)[last] - mean_{x in negative} h_L(x)[last]   (float64, shape (D,)).
    positive_qas: unknown-person and private questions (optionally filtered with `keep_refusals`); negative_qas:
    forget questions of the open-question form (kind "gen", as the release's forget QA): mc prompts end in a very
    different state because of their format alone and would dominate the difference. `negative_model` reads the
    negatives (the paper: base model for positives, vanilla model for negatives; default `model`). A `stats` dict
    receives layer, counts and norms (for `save_direction`)."""
    mu_pos, n_pos = mean_last_token_activation(model, processor, positive_qas, layer, batch_size)
    mu_neg, n_neg = mean_last_token_activation(negative_model or model, processor, negative_qas, layer, batch_size)
    v = mu_pos - mu_neg
    if stats is not None:
        stats.update(layer=layer, n_positive=n_pos, n_negative=n_neg, norm=float(v.norm()),
                     norm_positive_mean=float(mu_pos.norm()), norm_negative_mean=float(mu_neg.norm()),
                     cosine_positive_negative=float(F.cosine_similarity(mu_pos, mu_neg, dim=0)))
    return v


def save_direction(path: str, v: torch.Tensor, metadata: dict | None = None) -> None:
    """Write `path` with .json (the metadata: layer, counts, norms, model path, ...), then `path` (safetensors,
    tensor "direction", the metadata as strings in its header); each file whole or not at all (`write_atomic`)."""
    meta = dict(metadata or {})
    meta.setdefault("dim", int(v.shape[0]))
    meta.setdefault("norm", float(v.double().norm()))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(os.path.splitext(path)[0] + ".json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    write_atomic(path, lambda tmp: save_file({"direction": v.detach().cpu().contiguous()}, tmp,
                                             metadata={k: str(x) for k, x in meta.items()}))


def load_direction(path: str) -> tuple[torch.Tensor, dict]:
    """Inverse of `save_direction`: (v (D,), metadata dict from the .json next to it, {} if absent)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"direction file not found: {path}")
    tensors = load_file(path)
    if "direction" not in tensors:
        raise ValueError(f"{path} has no tensor named 'direction' (found {sorted(tensors)})")
    meta_path = os.path.splitext(path)[0] + ".json"
    meta = json.load(open(meta_path)) if os.path.isfile(meta_path) else {}
    return tensors["direction"], meta


@torch.no_grad()
def frozen_activation(h_updated: torch.Tensor, a: torch.Tensor, W: torch.Tensor, W0: torch.Tensor) -> torch.Tensor:
    """h_frozen = h_updated - a (W - W0)^T  (float32, no graph). Layer L's output is h_in + attn + a W^T and only
    W changed, so replacing W by W0 changes exactly the term a (W - W0)^T. h (B, L, D), a (B, L, F), W, W0 (D, F)."""
    return h_updated.float() - a.float() @ (W.float() - W0.float()).T


def forget_loss(h_last: torch.Tensor, h_frozen_last: torch.Tensor, v: torch.Tensor, c: float) -> torch.Tensor:
    """L_forget = MSE(h_updated[last], h_frozen[last] + c v): push the forget prompts along the knowledge-absence
    direction. h (B, D), v (D,); the mean runs over B and D."""
    return F.mse_loss(h_last.float(), h_frozen_last.float() + c * v.float())


def retain_loss(h: torch.Tensor, h_frozen: torch.Tensor, attention_mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """L_retain = alpha * MSE(h_updated, h_frozen) over the positions the mask marks:
    alpha * sum_{b,t: mask=1} |h[b,t] - h_frozen[b,t]|^2 / (n_marked * D). h (B, L, D), attention_mask (B, L).
    This project passes every real token of question + answer; the release's position is one column, index -1
    of a right-padded batch (`right_padded`; h[:, -1:] with a mask of ones), a pad for the shorter rows."""
    m = attention_mask.to(h.device, torch.float32)  # (B, L)
    sq = (h.float() - h_frozen.float()).pow(2).sum(-1)  # (B, L)
    return alpha * (sq * m).sum() / (m.sum().clamp(min=1) * h.shape[-1])


def right_padded(batch: dict) -> dict:
    """The rows of a left-padded `qa_batch` right-padded, as the release batches them: each row rotated left by
    its pad count, so index -1 is the last token (<|im_end|>) of the longest rows and a pad of the shorter ones.
    Images are unchanged (consumed in placeholder order, which the rows keep); positions count real tokens only
    and pads are masked keys, so every real token computes what it did before."""
    mask = batch["attention_mask"]
    pads = (mask == 0).sum(dim=1, keepdim=True)  # (B, 1)
    idx = (torch.arange(mask.shape[1], device=mask.device) + pads) % mask.shape[1]  # (B, L): row b from its n_b-th
    return {k: v.gather(1, idx) if k in ("input_ids", "attention_mask", "labels") else v for k, v in batch.items()}


def down_proj_name(layer: int) -> str:
    return f"model.language_model.layers.{layer}.mlp.down_proj.weight"


def steering_schedule(n_forget: int, n_retain: int, batch_size: int, epochs: int, rng: random.Random):
    """(epoch, kind, indices) of every optimiser step of stage 1, in order. Each epoch (as the release) shuffles
    the retain set and then the forget set into batches and iterates over the retain batches: every
    k = max(1, n_retain_batches // n_forget_batches) iterations it first takes one forget batch (while any is
    left), then every iteration one retain batch."""
    for epoch in range(epochs):
        retain_batches = shuffled_batches(n_retain, batch_size, rng)
        forget_batches = shuffled_batches(n_forget, batch_size, rng)
        every = max(1, len(retain_batches) // len(forget_batches))
        forget_iter = iter(forget_batches)
        for it, idx in enumerate(retain_batches):
            if it % every == 0:
                f_idx = next(forget_iter, None)
                if f_idx is not None:
                    yield epoch, "forget", f_idx
            yield epoch, "retain", idx


@contextmanager
def training_only(model: nn.Module, W: nn.Parameter):
    """Inside the block only W trains: every other parameter frozen, the model in eval mode (no dropout anywhere:
    the activations must be deterministic functions of W). Yields the tensor the optimiser updates: W itself for
    a float32 model, for a bf16/fp16 one a float32 master copy of W (an lr 1e-4 update is below bf16's resolution
    of most entries of W; `master_step` keeps W in step with it). After the block (even on error) W.grad is
    cleared and every parameter's requires_grad and every module's mode are back."""
    with temporarily(model.parameters(), "requires_grad", False), eval_mode(model):
        W.requires_grad_(True)
        try:
            yield W if W.dtype == torch.float32 else W.detach().float().clone().requires_grad_(True)
        finally:
            W.grad = None


def master_step(loss: torch.Tensor, W: nn.Parameter, master: torch.Tensor, optimizer) -> bool:
    """`optimizer_step` for W through its master copy (`training_only`): backward puts the gradient on W, it moves
    to the float32 master, the master steps and W takes its rounded value. Returns whether the step was taken."""
    if master is W:
        return optimizer_step(loss, [W], optimizer)
    if not optimizer_step(loss, [master], optimizer, after_backward=partial(_gradient_to_master, W, master)):
        return False
    with torch.no_grad():
        W.copy_(master)
    return True


def _gradient_to_master(W: nn.Parameter, master: torch.Tensor) -> None:
    master.grad, W.grad = W.grad.float(), None


def steering_loss(model: nn.Module, processor, qas: list, kind: str, position: str, layer: int, W: nn.Parameter,
                  W0: torch.Tensor, v: torch.Tensor, c: float, alpha: float) -> torch.Tensor:
    """`forget_loss` (kind "forget") or `retain_loss` ("retain") of a batch of questions, read at `position`:
    the forget loss at index -1, the last prompt token of a prompt-only batch ("prompt"); the retain loss over
    every real token of question + answer ("sequence"); "release": index -1 of a right-padded question + answer
    batch for either. h_frozen comes from the same forward (`frozen_activation`)."""
    at_release = position == "release"
    batch = qa_batch(processor, qas, with_answers=kind == "retain" or at_release, device=W.device)
    if at_release:
        batch = right_padded(batch)
    h, a = run_to_layer(model, batch, layer, grad=True)
    h_frozen = frozen_activation(h, a, W, W0)
    if kind == "forget":
        return forget_loss(h[:, -1], h_frozen[:, -1], v, c)
    if at_release:
        return retain_loss(h[:, -1:], h_frozen[:, -1:], torch.ones_like(batch["attention_mask"][:, -1:]), alpha)
    return retain_loss(h, h_frozen, batch["attention_mask"], alpha)


def optimize_steering(model: nn.Module, processor, forget_qas: list, retain_qas: list, direction: torch.Tensor,
                      layer: int, *, c: float, alpha: float, lr: float, batch_size: int, epochs: int,
                      seed: int = 0, log_every: int = 10, callback=None, weight_decay: float = 0.01,
                      forget_position: str = "prompt", retain_position: str = "sequence") -> dict:
    """Train only W = layer L's mlp.down_proj.weight (full matrix), all else frozen (`training_only`), with AdamW
    (constant lr: the release steps its linear schedule once per epoch; torch's default weight_decay 0.01; on a
    float32 master copy of W for a bf16/fp16 model), one step per batch of `steering_schedule`. Positions:
    forget_position "prompt" (a prompt-only batch, its last token) or "release"; retain_position "sequence"
    (question + answer, every real token) or "release"; "release" = index -1 of a right-padded question + answer
    batch (`right_padded`), as the authors' release reads both.

    callback(step, record) runs after every optimiser step. Returns stats: forget_loss / retain_loss (one float per
    step of that kind), log (a record per step), steps, param_name, original ({param_name: W0 on the CPU}, for
    `changed_tensors`). The model is left updated."""
    if not forget_qas or not retain_qas:
        raise ValueError("optimize_steering needs non-empty forget and retain sets")
    if forget_position not in ("prompt", "release") or retain_position not in ("sequence", "release"):
        raise ValueError(f"positions: forget 'prompt' or 'release', retain 'sequence' or 'release'; got "
                         f"{forget_position!r}, {retain_position!r}")
    W = decoder_layer(model, layer).mlp.down_proj.weight
    if direction.shape != (W.shape[0],):
        raise ValueError(f"direction shape {tuple(direction.shape)} != ({W.shape[0]},) (hidden size)")
    W0 = W.detach().clone()
    v = direction.to(W.device, torch.float32)
    name = down_proj_name(layer)
    stats = {"forget_loss": [], "retain_loss": [], "log": [], "param_name": name}
    schedule = steering_schedule(len(forget_qas), len(retain_qas), batch_size, epochs, random.Random(seed))
    t0 = time.time()
    with training_only(model, W) as master:
        optimizer = torch.optim.AdamW([master], lr=lr, weight_decay=weight_decay)
        for epoch, kind, idx in schedule:
            qas = [(forget_qas if kind == "forget" else retain_qas)[i] for i in idx]
            position = forget_position if kind == "forget" else retain_position
            loss = steering_loss(model, processor, qas, kind, position, layer, W, W0, v, c, alpha)
            master_step(loss, W, master, optimizer)
            record = {"step": len(stats["log"]), "epoch": epoch, "kind": kind, "loss": loss.item(),
                      "delta_norm": float((W.detach().float() - W0.float()).norm())}
            stats[f"{kind}_loss"].append(record["loss"])
            stats["log"].append(record)
            if callback is not None:
                callback(record["step"], record)
            if log_every and record["step"] % log_every == 0:
                print(f"[steer] epoch {epoch} step {record['step']:4d} {kind:6s} loss {record['loss']:.5f} "
                      f"|W-W0| {record['delta_norm']:.4f} ({time.time() - t0:.1f}s)", flush=True)
    stats.update(steps=len(stats["log"]), original={name: W0.cpu()})
    return stats


def changed_tensors(model: nn.Module, original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The parameters named in `original` ({name: tensor before training}) that differ from it now, as contiguous
    CPU tensors for `safetensors.torch.save_file` (stage 1 changes one matrix: its checkpoint is that matrix)."""
    params = dict(model.named_parameters())
    out = {}
    for name, before in original.items():
        if name not in params:
            raise ValueError(f"model has no parameter {name}")
        now = params[name].detach()
        if not torch.equal(now.cpu(), before.to(now.dtype).cpu()):
            out[name] = now.cpu().contiguous().clone()
    return out


def load_changed_tensors(model: nn.Module, path: str) -> list[str]:
    """Inverse of saving `changed_tensors`: copy the tensors of a safetensors file (e.g. a run's
    stage1.safetensors) into the model's parameters of the same names; returns their names."""
    params = dict(model.named_parameters())
    tensors = load_file(path)
    missing = [n for n in tensors if n not in params]
    if missing:
        raise ValueError(f"{path}: tensors {missing[:3]} are not parameters of the model")
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t.to(params[n].dtype))
    return list(tensors)
