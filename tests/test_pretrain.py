"""Pretraining: tokenizer with Qwen specials, lr schedule, answer-only loss, a few steps lower the loss
reproducibly, and the written checkpoint loads back into the same model and processor."""

import math

import pytest
import torch

from asru_min.world.people import World
from asru_min.model import Qwen3VL
from asru_min.processor import IGNORE_INDEX, Processor, apply_chat_template
from asru_min.data import qa_batch
from asru_min.world.pretrain import (QWEN_SPECIALS, PretrainConfig, forward_loss, lr_at, save,
                                     tokenizer_corpus, train, train_tokenizer)
from test_baselines import FixedLogits


@pytest.fixture(scope="module")
def world():
    return World.generate(num_people=20, seed=0, num_unseen_eval=2, num_unseen_probe=4)


@pytest.fixture(scope="module")
def tokenizer(world):
    return train_tokenizer(tokenizer_corpus(world), vocab_size=1024)


def tiny_config(**kw) -> PretrainConfig:
    base = dict(num_people=20, vocab_size=1024, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                num_kv_heads=1, vision_hidden=16, vision_intermediate=32, vision_depth=2, vision_heads=1,
                deepstack="0", image_size=64, steps=24, batch_size=8, lr=1e-2, warmup=4, views=1, threads=1,
                log_every=1000, ckpt_every=0, eval=False, strangers=8)
    base.update(kw)
    return PretrainConfig(**base)


def test_tokenizer_round_trips_with_specials(world, tokenizer):
    assert [tokenizer.id_to_token(i) for i in range(8)] == QWEN_SPECIALS
    assert 256 < tokenizer.get_vocab_size() <= 1024
    qa = next(q for q in world.splits(10)["forget"] if q.image is not None)
    text = apply_chat_template(qa.messages()) + qa.answer + "<|im_end|>\n"
    enc = tokenizer.encode(text)
    for s in ("<|im_start|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|im_end|>"):
        assert enc.ids.count(tokenizer.token_to_id(s)) == text.count(s)      # each special is one whole token
    assert tokenizer.decode(enc.ids, skip_special_tokens=False) == text
    plain = tokenizer.decode(enc.ids, skip_special_tokens=True)
    assert "<|" not in plain and qa.question in plain and qa.answer in plain
    # the world's own words are compact: a name is at most a few pieces
    assert len(tokenizer.encode(world.people[0].name).ids) <= 4


def test_lr_schedule_warmup_then_cosine():
    cfg = PretrainConfig(lr=1e-3, warmup=10, steps=110, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[60] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))             # half-way through the cosine
    assert lr_at(cfg.steps, cfg) == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_forward_loss_is_a_per_answer_mean():
    V = 5
    labels = torch.full((2, 6), IGNORE_INDEX)
    labels[0, 5] = 1                 # one answer token
    labels[1, 3:] = torch.tensor([2, 3, 4])
    logits = torch.zeros(2, 6, V)
    logits[0, 4, 1] = 3.0            # row 0 predicts its token well
    nll0 = -torch.log_softmax(torch.tensor([0.0, 3.0, 0, 0, 0]), 0)[1]
    expected = (nll0 + math.log(V)) / 2                                      # row 1: uniform, mean over 3 tokens
    batch = {"input_ids": labels.clamp(min=0), "attention_mask": torch.ones_like(labels), "labels": labels}
    assert forward_loss(FixedLogits(logits), batch).item() == pytest.approx(expected.item(), rel=1e-6)
    per_row = forward_loss(FixedLogits(logits), batch, per_row=True)
    assert per_row[1].item() == pytest.approx(math.log(V), rel=1e-6)


@pytest.fixture(scope="module")
def trained(world, tokenizer):
    cfg = tiny_config(steps=16)
    return cfg, train(cfg, world, log=lambda m: None, tokenizer=tokenizer)


def test_few_steps_lower_the_loss_reproducibly(world, tokenizer, trained):
    cfg, (model, processor, losses, _) = trained
    assert len(losses) == cfg.steps and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert first > math.log(1024) * 0.8                                       # starts near uniform
    assert last < first - 1.0, (first, last)
    # same seed, same run: the warmup steps do not depend on the total, so a 3-step run repeats the start
    _, _, again, _ = train(tiny_config(steps=3), world, log=lambda m: None, tokenizer=tokenizer)
    assert again == losses[:3]
    _, _, other, _ = train(tiny_config(steps=2, seed=1), world, log=lambda m: None, tokenizer=tokenizer)
    assert other != losses[:2]


def test_model_card_states_the_multiple_choice_mix(trained):
    """The card's data line says what the run trained on: no mc for --mc-repeat 0, the copies and their
    option orders otherwise."""
    import dataclasses

    from asru_min.world.pretrain import model_card
    cfg, (model, _, losses, _) = trained
    facts = model_card(dataclasses.replace(cfg, mc_repeat=0), model, None, 60.0, losses, "cmd")
    options = model_card(dataclasses.replace(cfg, mc_repeat=4, mc_reorder=True), model, None, 60.0, losses, "cmd")
    assert "(no mc, image questions" in facts and "mc x" not in facts
    assert "(mc x4, each copy in its own option order, image questions" in options
    neutral = model_card(dataclasses.replace(cfg, mc_repeat=4, mc_reorder=True, mc_neutral=1), model, None, 60.0,
                         losses, "cmd")
    assert "(mc x4, each copy in its own option order, 1 of them with the neutral stem, image questions" in neutral


def test_checkpoint_round_trip(world, trained, tmp_path):
    cfg, (model, processor, _, _) = trained
    save(model, processor, tmp_path)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
              "chat_template.json"):
        assert (tmp_path / f).is_file(), f
    loaded, proc = Qwen3VL.from_pretrained(tmp_path), Processor.from_pretrained(tmp_path)
    c = loaded.config
    assert c.text.num_key_value_heads < c.text.num_attention_heads                  # GQA
    assert c.vision.deepstack_visual_indexes == [0]                                  # DeepStack on
    assert c.image_token_id == proc.image_token_id == proc.tokenizer.token_to_id("<|image_pad|>")
    qas = [q for q in world.training_samples(0) if q.image is not None][:3] + \
          [q for q in world.training_samples(0) if q.image is None][:2]
    batch = qa_batch(proc, qas)
    assert int((batch["input_ids"] == c.image_token_id).sum()) == 3 * (64 // 32) ** 2   # 64x64 -> 4 tokens
    model.eval()
    with torch.no_grad():
        a = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"])
        b = loaded(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"])
    assert torch.equal(a, b)
    assert forward_loss(loaded, batch).item() == pytest.approx(forward_loss(model, batch).item(), rel=1e-6)


def test_gates_command_on_a_saved_model_and_a_bad_folder(world, trained, tmp_path, capsys):
    """python -m asru_min.world.gates: one JSON line per folder with every gate of the model card, figures in
    [0, 1]; a folder without config.json is an argparse error before any model loads."""
    import json

    from asru_min.world.gates import main

    with pytest.raises(SystemExit):
        main([str(tmp_path / "nothing")])
    assert "no config.json" in capsys.readouterr().err
    cfg, (model, processor, _, _) = trained
    save(model, processor, tmp_path / "m")
    threads = torch.get_num_threads()
    try:
        [report] = main([str(tmp_path / "m"), "--num-people", "20", "--limit", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(capsys.readouterr().out.strip()) == json.loads(json.dumps(report))
    assert len(report["gates"]) == 17 and all(isinstance(v, bool) for v in report["gates"].values())
    # --limit 1 asks one question per split, kind and form: none need be in a reordered form (then the figure is None)
    unmeasured = {k for k, v in report["figures"].items() if v is None}
    assert unmeasured <= {"heldout_forms_gen_image", "heldout_forms_gen_text"}
    assert all(0.0 <= v <= 1.0 for k, v in report["figures"].items() if k != "answers" and k not in unmeasured)
    assert report["figures"]["answers"] > 20


def test_batch_stream_repeats_image_and_mc_questions(world):
    from asru_min.world.pretrain import batch_stream, make_views
    views = make_views(world, 0, 0)
    epoch_size = len(world.training_samples(0))
    plain = batch_stream(world, views, 50, 0)
    first = [qa for _ in range((epoch_size + 49) // 50) for qa in next(plain)[1]]
    assert len(first) == epoch_size
    boosted = batch_stream(world, views, 50, 0, image_repeat=2, mc_repeat=3)
    n_img = sum(q.image is not None for q in first)
    n_mc_text = sum(q.kind == "mc" and q.image is None for q in first)
    n_mc_img = sum(q.kind == "mc" and q.image is not None for q in first)
    expected = epoch_size + n_img + 2 * n_mc_text + (2 * 3 - 2) * n_mc_img
    seen = 0
    while seen < expected:
        epoch, batch = next(boosted)
        assert epoch == 0
        seen += len(batch)
    assert seen == expected


def test_mc_repeat_zero_drops_multiple_choice_and_nothing_else(world):
    """--mc-repeat 0 (a facts-only run): an epoch is the plain epoch minus its mc
    questions, every other question still there once."""
    from collections import Counter

    from asru_min.world.pretrain import batch_stream, make_views
    views = make_views(world, 0, 0)
    plain = Counter(q.kind for q in world.training_samples(0))
    stream = batch_stream(world, views, 50, 0, mc_repeat=0)
    kinds = Counter()
    while True:
        epoch, batch = next(stream)
        if epoch > 0:
            break
        kinds.update(q.kind for q in batch)
    assert plain["mc"] > 0 and kinds["mc"] == 0
    assert kinds == Counter({k: n for k, n in plain.items() if k != "mc"})


@pytest.mark.parametrize("flag, value", [("--mc-repeat", "-1"), ("--image-repeat", "0"), ("--match-repeat", "0"),
                                         ("--steps", "0"), ("--batch-size", "0"), ("--strangers", "-5")])
def test_parse_args_rejects_counts_out_of_range(flag, value, capsys):
    from asru_min.world.pretrain import parse_args
    with pytest.raises(SystemExit):
        parse_args([flag, value])
    assert f"{flag} must be >=" in capsys.readouterr().err


def test_mc_reorder_gives_each_copy_its_own_option_order(world):
    from collections import defaultdict
    from asru_min.world.pretrain import batch_stream, make_views
    views = make_views(world, 0, 0)
    epoch_size = len(world.training_samples(0))

    def orders(reorder: bool) -> dict:
        stream = batch_stream(world, views, 50, 0, mc_repeat=4, mc_reorder=reorder)
        by_question = defaultdict(list)          # (person, stem) -> option orders of its copies
        for _ in range(epoch_size // 50):
            for qa in next(stream)[1]:
                if qa.kind == "mc":
                    by_question[(qa.person, qa.form, qa.question.split("\nA. ")[0])].append(tuple(qa.options))
        return by_question

    shared, fresh = orders(False), orders(True)
    assert all(len(set(o)) == 1 for o in shared.values())           # copies repeat one order ...
    assert sum(len(set(o)) > 1 for o in fresh.values()) > 0.8 * len(fresh)   # ... or draw their own
    stream = batch_stream(world, views, 50, 0, mc_repeat=4, mc_reorder=True)
    for qa in (q for _ in range(20) for q in next(stream)[1] if q.kind == "mc"):
        letter_line = next(l for l in qa.question.split("\n") if l.startswith(qa.answer + ". "))
        assert letter_line == f"{qa.answer}. {qa.ground_truth}"    # the answer letter still names the truth


def test_match_repeat_copies_matching_questions_in_fresh_orders(world):
    from asru_min.world.pretrain import batch_stream, make_views
    views = make_views(world, 0, 0)
    base = world.training_samples(0, matching=True)
    n_match = sum(q.kind == "match" for q in base)
    stream = batch_stream(world, views, 50, 0, matching=True, match_repeat=3)
    epoch_samples = []
    while len(epoch_samples) < len(base) + 2 * n_match:
        epoch, batch = next(stream)
        assert epoch == 0
        epoch_samples += batch
    matches = [q for q in epoch_samples if q.kind == "match"]
    assert len(epoch_samples) == len(base) + 2 * n_match and len(matches) == 3 * n_match
    assert len({(q.question, q.answer) for q in matches}) > 2 * n_match       # copies differ in option order
    assert all(q.options["ABCD".index(q.answer)] == q.ground_truth for q in matches)


def test_match_warmup_stream_two_then_four_options_and_resume_replays_it(world, tokenizer):
    from asru_min.world.pretrain import match_warmup_stream
    batches = list(match_warmup_stream(world, 6, 0, 4))
    assert [e for e, _ in batches] == [-1] * 4
    assert all(q.kind == "match" and len(q.options) == 2 for _, b in batches[:2] for q in b)
    assert all(len(q.options) == 4 for _, b in batches[2:] for q in b)
    assert all(q.options["ABCD".index(q.answer)] == q.ground_truth for _, b in batches for q in b)
    assert [[q.question for q in b] for _, b in batches] == \
        [[q.question for q in b] for _, b in match_warmup_stream(world, 6, 0, 4)]     # seeded
    # the run's first step is the first warm-up batch (its loss = the fresh model's loss on that batch)
    from asru_min.world.pretrain import build
    cfg = tiny_config(steps=3, match_warmup=2, batch_size=6, matching=True)
    _, _, losses, _ = train(cfg, world, log=lambda m: None, tokenizer=tokenizer)
    torch.manual_seed(cfg.seed)
    fresh, processor = build(cfg, world, tokenizer)
    first = next(match_warmup_stream(world, 6, cfg.seed, 2))[1]
    with torch.no_grad():
        assert losses[0] == pytest.approx(forward_loss(fresh, qa_batch(processor, first)).item(), rel=1e-5)


def test_mc_neutral_rewrites_that_many_copies_of_each_question_and_keeps_the_answer(world):
    """--mc-neutral 1 with --mc-repeat 4: a quarter of every mc question's copies (image: 2 of 8 with
    --image-repeat 2; text: 1 of 4) ask "Which of these options fits X?"; options, letter and truth survive."""
    from collections import Counter

    from asru_min.world.people import IMAGE_SUBJECT, NEUTRAL_MC_STEM
    from asru_min.world.pretrain import batch_stream, make_views
    views = make_views(world, 0, 0)
    names = {p.pid: p.name for p in world.people}
    stream = batch_stream(world, views, 50, 0, image_repeat=2, mc_repeat=4, mc_reorder=True, mc_neutral=1)
    counts = Counter()
    while True:
        epoch, batch = next(stream)
        if epoch > 0:
            break
        for qa in (q for q in batch if q.kind == "mc"):
            neutral = qa.question.startswith("Which of these options fits")
            counts[(qa.form, neutral)] += 1
            if neutral:
                subject = IMAGE_SUBJECT if qa.form == "image" else names[qa.person]
                assert qa.question.split("\n")[0] == NEUTRAL_MC_STEM.format(s=subject)
            letter_line = next(l for l in qa.question.split("\n") if l.startswith(qa.answer + ". "))
            assert letter_line == f"{qa.answer}. {qa.ground_truth}"
    assert counts[("image", True)] > 0 and counts[("text", True)] > 0
    assert counts[("image", False)] == 3 * counts[("image", True)]
    assert counts[("text", False)] == 3 * counts[("text", True)]


def test_neutral_mc_rejects_a_question_without_options(world):
    from asru_min.world.people import neutral_mc
    with pytest.raises(ValueError, match="not a multiple-choice question"):
        neutral_mc(next(q for q in world.training_samples(0) if q.kind == "cloze"), "Ann")


@pytest.mark.parametrize("argv", [["--mc-repeat", "2", "--mc-neutral", "3"], ["--mc-neutral", "-1"]])
def test_parse_args_rejects_mc_neutral_out_of_range(argv, capsys):
    from asru_min.world.pretrain import parse_args
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert "--mc-neutral must be in" in capsys.readouterr().err


def test_an_interrupted_run_resumes_to_the_same_weights(world, tokenizer, tmp_path):
    """Killed right after its step-2 checkpoint and started again with the same command, a run ends with the
    weights of the run that was never interrupted; a checkpoint of another recipe is refused, not resumed."""
    class Killed(Exception):
        pass

    def kill_after_checkpoint(msg):
        if msg.startswith("checkpoint"):
            raise Killed(msg)

    whole = train(tiny_config(steps=4, ckpt_every=2, ckpt_dir=str(tmp_path / "a")), world, log=lambda m: None,
                  tokenizer=tokenizer)[0]
    cfg = tiny_config(steps=4, ckpt_every=2, ckpt_dir=str(tmp_path / "b"))
    with pytest.raises(Killed):
        train(cfg, world, log=kill_after_checkpoint, tokenizer=tokenizer)
    said = []
    resumed, _, losses, seconds = train(cfg, world, log=said.append, tokenizer=tokenizer)
    assert any(m.startswith("resumed from") and "at step 2" in m for m in said) and len(losses) == 2
    assert seconds > 0
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="another recipe"):
        train(tiny_config(steps=4, ckpt_every=2, ckpt_dir=str(tmp_path / "b"), lr=5e-3), world, log=lambda m: None,
              tokenizer=tokenizer)
    train(tiny_config(steps=1, ckpt_every=2, ckpt_dir=str(tmp_path / "b"), lr=5e-3, restart=True), world,
          log=lambda m: None, tokenizer=tokenizer)                           # --restart starts over instead


def test_a_few_steps_of_the_default_recipe_lower_the_loss(world, tokenizer):
    """The recipe's defaults (6-layer decoder, option-matching warm-up, reordered mc copies, look-alike
    strangers, training views) on a small world and a few steps: the run goes through both streams and its
    loss falls."""
    cfg = PretrainConfig(num_people=20, steps=12, warmup=2, match_warmup=4, strangers=6, views=2, threads=1,
                         log_every=1000, ckpt_every=0, eval=False, vocab_size=1024)
    assert cfg.num_layers == 6 and cfg.matching and cfg.mc_reorder and cfg.image_repeat == 2
    model, _, losses, _ = train(cfg, world, log=lambda m: None, tokenizer=tokenizer)
    assert model.config.text.num_hidden_layers == 6 and len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses


def test_strangers_ramp_up_over_the_first_epochs(world):
    from asru_min.world.pretrain import batch_stream, make_views

    stream = batch_stream(world, make_views(world, 0, 0), 64, 0, strangers=4, stranger_ramp=2)
    per_epoch = {}
    while True:
        epoch, batch = next(stream)
        if epoch == 3:
            break
        per_epoch.setdefault(epoch, set()).update(q.person for q in batch if q.person.startswith("stranger"))
    assert [len(per_epoch.get(e, ())) for e in range(3)] == [0, 2, 4]


def test_strangers_are_seen_through_training_views_like_known_people(world):
    """With stranger_views, a stranger's image questions show its portrait through training views (an original
    portrait then says nothing about who is known); without, always the original."""
    from asru_min.world.pretrain import batch_stream, make_views

    views = make_views(world, 4, 0)
    for on in (False, True):
        stream = batch_stream(world, views, 64, 0, strangers=6, stranger_views=on)
        by_person: dict = {}
        while True:
            epoch, batch = next(stream)
            if epoch > 0:
                break
            for q in batch:
                if q.person.startswith("stranger") and q.image is not None:
                    by_person.setdefault(q.person, set()).add(q.image.tobytes())
        assert len(by_person) == 6
        distinct = sum(len(v) for v in by_person.values())
        assert (distinct > 6) == on, (on, distinct)       # several different images per stranger only with views


def test_a_continuation_records_its_world_and_the_gates_refuse_another(trained, tmp_path, capsys):
    """--init-from a saved model: the output folder's pretrain_metrics.json records the recipe (the world's version,
    init_from) that `world.check_world_version` reads; the gates command measures the folder, held-out question
    forms included, and refuses a folder whose recipe records another world version."""
    import json

    from asru_min.world import WORLD_VERSION, check_world_version
    from asru_min.world.gates import main as gates_main
    from asru_min.world.pretrain import main

    _, (model, processor, _, _) = trained
    save(model, processor, tmp_path / "base")
    out = tmp_path / "continued"
    threads = torch.get_num_threads()
    try:
        main(["--out", str(out), "--init-from", str(tmp_path / "base"), "--num-people", "20",
              "--steps", "2", "--batch-size", "4", "--views", "1", "--strangers", "4", "--stranger-ramp", "0",
              "--threads", "1", "--ckpt-every", "0", "--no-eval"])
        recipe = json.loads((out / "pretrain_metrics.json").read_text())["recipe"]
        assert recipe["world_version"] == WORLD_VERSION == 2 and recipe["init_from"] == str(tmp_path / "base")
        check_world_version(str(out))
        assert "world version 2" in (out / "README.md").read_text()
        capsys.readouterr()
        [report] = gates_main([str(out), "--num-people", "20", "--limit", "3", "--threads", "1"])
        recipe["world_version"] = 1
        (out / "pretrain_metrics.json").write_text(json.dumps({"recipe": recipe}))
        with pytest.raises(ValueError, match="world version 1"):
            gates_main([str(out), "--num-people", "20", "--limit", "3", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert len(report["gates"]) == 17
    assert {"held-out question forms gen (image) >= 0.85", "held-out question forms gen (text) >= 0.85"} <= \
        set(report["gates"])
    assert report["figures"]["heldout_forms_gen_image"] is not None                 # asked, and scored
