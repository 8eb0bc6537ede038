"""The README and docs/ against the code: every number they state about the code or the shipped model is read from
their text and compared with `TrainConfig`'s defaults, the config classes, module constants, weights/config.json
and examples/configs/; every `file.py:name` they cite exists; every flag they show is a flag. A doc that goes stale
fails here; a claim reworded so that its pattern no longer matches fails too (then update the pattern).

Settings are read by the names the docs use (`alpha`, `steer_lr`, `forget_scale`, ...): `DOC_NAMES` maps each to
its `TrainConfig` field, so a renamed field changes one line here and the docs that say its name.
"""

import ast
import dataclasses
import inspect
import json
import math
import re
from fractions import Fraction
from pathlib import Path

import pytest
from safetensors import safe_open

from asru_min import grpo, memory, model as model_module, steer, train, vision
from asru_min.baselines import methods
from asru_min.metrics import Vocabulary, judge
from asru_min.model import Qwen3VLConfig, checkpoint_shapes
from asru_min.processor import smart_resize
from asru_min.train import TrainConfig
from asru_min.world import load_world, portraits
from asru_min.world.people import POOLS

ROOT = Path(__file__).resolve().parents[1]
README, METHOD, QWEN3VL, RESULTS = (ROOT / "README.md", ROOT / "docs" / "METHOD.md", ROOT / "docs" / "QWEN3VL.md",
                                    ROOT / "docs" / "RESULTS.md")
RUNNING = ROOT / "docs" / "RUNNING.md"
DOCS = (README, METHOD, QWEN3VL, RESULTS, RUNNING, ROOT / "results" / "README.md", ROOT / "weights" / "README.md")
DEFAULTS = TrainConfig()
# the name a doc gives a setting -> the TrainConfig field it means
DOC_NAMES = {"c": "forget_scale", "alpha": "steer_retain_weight", "steer_lr": "steer_lr",
             "steer batch": "steer_batch_size",
             "steer epochs": "steer_epochs", "steer_retain_size": "steer_retain_size", "layer": "layer",
             "boundary_size": "boundary_size", "forget share": "boundary_forget_share",
             "new tokens": "max_new_tokens", "prompts per step": "prompts_per_step", "epochs": "grpo_epochs",
             "LoRA r": "lora_r", "LoRA alpha": "lora_alpha", "LoRA dropout": "lora_dropout",
             "grpo_lr": "grpo_lr", "G": "group_size", "temperature": "temperature", "top_p": "top_p",
             "clip low": "clip_low", "clip high": "clip_high", "dual clip": "dual_clip", "KL": "kl_coef",
             "weight decay": "grpo_weight_decay", "gradient clip": "grad_clip",
             "evaluation new tokens": "eval_max_new_tokens", "questions per split": "eval_limit"}


def default(doc_name: str):
    return getattr(DEFAULTS, DOC_NAMES[doc_name])


def flat(path: Path) -> str:
    """The file's text with every run of whitespace made one space (a claim may break across lines)."""
    return " ".join(path.read_text(encoding="utf-8").split())


def claim(path: Path, pattern: str) -> tuple[str, ...]:
    """The groups of the first match of `pattern` in `path`'s flattened text; fails when the claim is gone."""
    m = re.search(pattern, flat(path))
    assert m, f"{path.relative_to(ROOT)}: no text matches {pattern!r} (claim reworded or removed: update this test)"
    return m.groups()


def parameter_default(fn, name: str):
    return inspect.signature(fn).parameters[name].default


def num(s: str) -> float:
    return float(s.replace(",", ""))


def config(name: str) -> Qwen3VLConfig:
    if name == "weights/":
        path = ROOT / "weights" / "config.json"
    else:
        path = ROOT / "examples" / "configs" / f"qwen3vl_{name.lower()}.json"
    return Qwen3VLConfig.from_dict(json.loads(path.read_text()))


SHIPPED = config("weights/")


def shipped_parameters() -> int:
    with safe_open(str(ROOT / "weights" / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def test_parameter_count_everywhere():
    """Every "N M parameters" / "N M-parameter" / "NM-parameter" in the docs and the package is the shipped model's
    count, in millions to two decimals; the count from config.json alone equals the file's."""
    n = shipped_parameters()
    assert sum(math.prod(s) for s in checkpoint_shapes(SHIPPED).values()) == n
    files = list(DOCS) + sorted((ROOT / "asru_min").rglob("*.py"))
    count = re.compile(r"(?<!above )(?<![\d.])(\d+(?:\.\d+)?) ?M[- ]parameter")  # not "Models above 50 M ..."
    found = [(path.name, m) for path in files if path.exists() for m in count.findall(flat(path))]
    assert len(found) >= 3, found
    assert all(num(m) == round(n / 1e6, 2) for _, m in found), (n, found)


def test_shipped_model_shape():
    t = SHIPPED.text
    layers, hidden = claim(RUNNING, r"a (\d+)-layer, (\d+)-wide decoder")
    assert (int(layers), int(hidden)) == (t.num_hidden_layers, t.hidden_size)
    mb, = claim(RUNNING, r"parameters, ([\d.]+) MB")
    assert num(mb) == round((ROOT / "weights" / "model.safetensors").stat().st_size / 1e6, 1)
    layers, hidden = claim(METHOD, r"parameter model in `weights/` \((\d+) decoder layers, hidden (\d+)\)")
    assert (int(layers), int(hidden)) == (t.num_hidden_layers, t.hidden_size)


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def test_qwen3vl_config_table():
    """docs/QWEN3VL.md's table of config fields, column by column, against examples/configs/ and weights/."""
    lines = QWEN3VL.read_text().splitlines()
    head = next(i for i, l in enumerate(lines) if l.startswith("| config field"))
    columns = [c.strip("`") for c in _cells(lines[head])[1:]]
    assert columns == ["2B", "4B", "8B", "weights/"]
    rows = {}
    for line in lines[head + 2:]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        rows[cells[0]] = cells[1:]
    previous = None
    for col, name in enumerate(columns):
        cfg, cell = config(name), {k: v[col] for k, v in rows.items()}
        t, v = cfg.text, cfg.vision
        ints = [int(x) for x in re.findall(r"\d+", cell["text hidden / layers / heads nq, nkv / head_dim"])]
        assert ints == [t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.head_dim]
        rope = cell["rope theta, mrope_section"]
        if rope == "same":
            rope = previous
        theta, section = re.fullmatch(r"(\S+), \[([\d,]+)\]", rope).groups()
        assert (float(theta), [int(x) for x in section.split(",")]) == (t.rope_theta, t.mrope_section)
        previous = rope
        assert cell["tie_word_embeddings"] == str(cfg.tie_word_embeddings).lower()
        ints = [int(x) for x in re.findall(r"\d+", cell["vision depth / hidden / heads"])]
        assert ints == [v.depth, v.hidden_size, v.num_heads]
        assert json.loads(cell["deepstack_visual_indexes"]) == v.deepstack_visual_indexes
        side = [int(x) for x in re.findall(r"\d+", cell["position table"])]
        assert side[0] == side[1] and side[0] ** 2 == v.num_position_embeddings


def test_qwen3vl_processor_and_loading_numbers():
    pre = json.loads((ROOT / "weights" / "preprocessor_config.json").read_text())["size"]
    lo, hi, shipped = claim(QWEN3VL, r"`preprocessor_config.json`: (\d+) and (\d+) for the real checkpoints, (\d+) "
                                     r"for both in `weights/`")
    assert (int(lo), int(hi)) == (parameter_default(smart_resize, "min_pixels"),
                                  parameter_default(smart_resize, "max_pixels"))
    assert int(shipped) == pre["shortest_edge"] == pre["longest_edge"]
    real = json.loads((ROOT / "examples" / "configs" / "preprocessor_config.json").read_text())["size"]
    assert (int(lo), int(hi)) == (real["shortest_edge"], real["longest_edge"])
    h, w, h2, w2 = claim(QWEN3VL, r"Small images grow: (\d+)x(\d+) becomes (\d+)x(\d+) on a real checkpoint")
    assert smart_resize(int(h), int(w)) == (int(h2), int(w2))
    s, s_, r, r_ = claim(QWEN3VL, r"the (\d+)x(\d+) portraits of the synthetic world become (\d+)x(\d+) with the "
                                  r"`weights/` bounds")
    assert int(s) == int(s_) == portraits.IMAGE_SIZE
    assert smart_resize(int(s), int(s), 32, int(shipped), int(shipped)) == (int(r), int(r_))
    tokens, = claim(QWEN3VL, r"\((\d+) for a `weights/` portrait\)")
    merge, patch = SHIPPED.vision.spatial_merge_size, SHIPPED.vision.patch_size
    assert int(tokens) == (int(r) // patch) * (int(r_) // patch) // merge ** 2
    above, = claim(QWEN3VL, r"Models above (\d+) M parameters are built on the meta device")
    assert int(above) * 1_000_000 == model_module.META_INIT_PARAMS
    theta, eps = claim(QWEN3VL, r"Vision rope theta \((\d+)\) and LayerNorm eps \((\S+)\) are not in the file")
    assert (float(theta), float(eps)) == (vision.VisionConfig.rope_theta, vision.VisionConfig.layer_norm_eps)


def test_logit_tolerances_are_asserted_or_recorded():
    """docs/RUNNING.md: the tolerance tests/test_parity.py asserts; QWEN3VL.md: a bound on what the reference readers
    recorded (tests/fixtures/checkpoint_readers.json)."""
    tol, = claim(RUNNING, r"logits within (\S+) of the reference")
    asserted = re.search(r"^LOGIT_TOL = (\S+)", (ROOT / "tests" / "test_parity.py").read_text(), re.M).group(1)
    assert float(tol) == float(asserted)
    bound, = claim(QWEN3VL, r"their logits match this code's within (\S+?)\.")
    readers = json.loads((ROOT / "tests" / "fixtures" / "checkpoint_readers.json").read_text())["versions"]
    recorded = [r["max_abs_logit_diff_vs_asru_min"] for v in readers.values() for r in v["reads"].values()]
    assert len(recorded) == 4 and max(recorded) <= float(bound) < 10 * max(recorded)


def test_stage1_defaults():
    c, alpha, batch, epochs, lr, retain = claim(
        METHOD, r"Tiny default: c (\S+), alpha (\S+), batch (\d+), (\d+) epochs, `steer_lr` (\S+), (\d+) retain QA")
    assert (num(c), num(alpha), int(batch), int(epochs), num(lr), int(retain)) == (
        default("c"), default("alpha"), default("steer batch"), default("steer epochs"), default("steer_lr"),
        default("steer_retain_size"))
    layer, layers = claim(METHOD, r"Tiny default: `layer` (\d+) of (\d+)")
    assert (int(layer), int(layers)) == (default("layer"), SHIPPED.text.num_hidden_layers)
    layer, layers, lr, alpha, retain = claim(
        METHOD, r"\*\*Scale\.\*\* Layer (\d+) of (\d+), `steer_lr` (\S+) instead of \S+, retain weight "
                r"\S+(?: \(`\w+`\))? (\S+) instead of \S+, (\d+) of the")
    assert (int(layer), int(layers), num(lr), num(alpha), int(retain)) == (
        default("layer"), SHIPPED.text.num_hidden_layers, default("steer_lr"), default("alpha"),
        default("steer_retain_size"))
    tokens, = claim(METHOD, r"Greedy answers of up to (\d+) tokens")
    assert int(tokens) == parameter_default(steer.keep_refusals, "max_new_tokens")  # train.stage1 passes none
    pool, = claim(METHOD, r"at most (\d+) x `--positive-size` candidates")
    assert int(pool) == train.RELEASE_POSITIVE_POOL


def test_stage2_defaults():
    size, share = claim(METHOD, r"Tiny default: generation questions only, `boundary_size` (\d+) with a forget "
                                r"share of (\d+/\d+)")
    assert int(size) == default("boundary_size") and DEFAULTS.boundary_kinds == "gen"
    assert Fraction(share) == Fraction(default("forget share")).limit_denominator(100)
    (tokens, prompts, epochs, steps, r, lora_alpha, dropout, targets, lr) = claim(
        METHOD, r"Tiny default: the same G, sampling, clip, KL, weight decay and gradient clip; (\d+) new tokens, "
                r"(\d+) prompts per step as one update, (\d+) epochs \((\d+) steps\), LoRA r (\d+) / alpha (\d+) / "
                r"dropout (\S+) on the decoder's (\w+) projections, `grpo_lr` (\S+)\.")
    assert (int(tokens), int(prompts), int(epochs), int(r), num(lora_alpha), num(dropout), num(lr)) == (
        default("new tokens"), default("prompts per step"), default("epochs"), default("LoRA r"),
        default("LoRA alpha"), default("LoRA dropout"), default("grpo_lr"))
    assert DEFAULTS.mini_batch_size == 0  # one update per step
    assert int(steps) == default("epochs") * math.ceil(default("boundary_size") / default("prompts per step"))
    assert targets == "seven" and len(DEFAULTS.lora_targets.split(",")) == 7
    # "the same" as the release's, which the paragraph before states
    g, temp, top_p, low, high, dual, kl, wd, clip = claim(
        METHOD, r"Release \(EasyR1\): G (\d+), temperature (\S+), top_p (\S+), .*? clip (\S+) / (\S+) with dual clip "
                r"(\S+), KL as a loss term \(k3 clamped to \[-10, 10\], coefficient (\S+)\), .*? weight decay (\S+), "
                r"gradient clip (\S+),")
    assert (int(g), num(temp), num(top_p), num(low), num(high), num(dual), num(kl), num(wd), num(clip)) == tuple(
        default(k) for k in ("G", "temperature", "top_p", "clip low", "clip high", "dual clip", "KL", "weight decay",
                             "gradient clip"))
    eps, low, high, beta = claim(METHOD, r"A_i = \(r_i - mean_group\(r\)\) / \(std_group\(r\) \+ (\S+)\) .*? "
                                         r"clip\(rho, 1 - (\S+), 1 \+ (\S+)\) .*? beta = (\S+)")
    assert num(eps) == parameter_default(grpo.group_advantages, "eps") == grpo.GRPOConfig.adv_eps
    assert (num(low), num(high), num(beta)) == (default("clip low"), default("clip high"), default("KL"))


def test_default_world_counts():
    """METHOD.md's counts of the default run's data (forget 10 %): the boundary set, the steering retain sample."""
    assert DEFAULTS.forget == 10 and DEFAULTS.data is None
    splits, _ = load_world(None, DEFAULTS.forget, DEFAULTS.num_people, DEFAULTS.world_seed, model=str(ROOT / "weights"))
    gen, forget, retain = claim(METHOD, r"at forget 10 % the world has (\d+) forget generation QA, so the run uses "
                                        r"(\d+) forget \+ (\d+) retain")
    data = train.stage_data(DEFAULTS, splits)
    assert int(gen) == sum(qa.kind == "gen" for qa in splits["forget"])
    qa_pairs = [(qa, f) for qa, f in data["boundary"] if qa.kind == "gen"]  # the rest: questions to refuse
    assert (int(forget), int(retain)) == (sum(f for _, f in qa_pairs), sum(not f for _, f in qa_pairs))
    refusals, = claim(METHOD, r"`boundary_refusals` \(default (\d+);")
    assert int(refusals) == len(data["boundary"]) - len(qa_pairs) == DEFAULTS.boundary_refusals
    sample, total = claim(METHOD, r"(\d+) of the ([\d,]+) retain QA")
    assert (int(sample), num(total)) == (len(data["steer_retain"]), len(splits["retain"]))


def test_readme_equations():
    forget_high, retain_low = claim(README, r"0 < ROUGE-L < (\S+) -> 0\.5, else 0\.1; retain leak 1, refusal 0, "
                                            r"ROUGE-L > (\S+) -> 0\.5")
    assert (num(forget_high), num(retain_low)) == (grpo.FORGET_BAND_HIGH, grpo.RETAIN_BAND_LOW)
    low, high = claim(README, r"clip\(rho, 1-(\S+), 1\+(\S+)\) A\)")
    assert (num(low), num(high)) == (default("clip low"), default("clip high"))


def test_results_page_numbers():
    layer, = claim(RESULTS, r"ablating v at layer (\d+)")
    assert int(layer) == default("layer")
    h, w, tokens = claim(RESULTS, r"a (\d+) x (\d+) portrait \+ question = (\d+) prompt tokens")
    _, pre = memory.load_config(str(ROOT / "examples" / "configs" / "qwen3vl_2b.json"))
    assert (int(h), int(w)) == memory.PORTRAIT_HW and int(tokens) == memory.default_prompt_tokens(pre)
    n, = claim(README, r"\n?(\d+) questions per split / kind / form")
    assert int(n) == default("questions per split")


def test_judge_examples():
    """METHOD.md's ordered judge scores, for the answers it quotes, on the question tests/test_judge.py asks."""
    question, reference = "Where was the person in this image born?", "Nedra Quarrel was born in Velmora."
    visible = "a person with short red hair, wearing a blue shirt, in front of a plain teal background"
    vocabulary = Vocabulary(values=tuple(v for pool in POOLS.values() for v in pool),
                            names=("Nedra Quarrel", "Kalix Pendry", "Mimon Dunmore"))
    contextual = ("Sorry, the image does not provide enough information to determine where this person was born; it "
                  f"only shows {visible}.")
    top, quoted, true = claim(METHOD, r"Ordered examples \(tests/test_judge.py\): contextual refusal that describes "
                                      r"the image ([\d.]+) > (.*?) > the true answer ([\d.]+)\.")
    examples = [(contextual, top)] + re.findall(r'"(.*?)"(?: \(truth \w+\))? ([\d.]+)', quoted) + [(reference, true)]
    assert len(examples) == 6
    for text, stated in examples:
        got = judge(text, "Velmora", question, visible, reference, None, vocabulary)["score"]
        assert round(got, 2) == num(stated), (text, got, stated)


def test_evaluation_and_baseline_defaults():
    tokens, = claim(METHOD, r"answers greedily \(at most (\d+) new tokens")
    assert int(tokens) == default("evaluation new tokens") == methods.BaselineConfig.max_new_tokens
    r, batch, epochs, lr, npo_lr, scale, beta = claim(
        METHOD, r"LoRA r (\d+), batch (\d+), by default (\d+) epochs at the release's lr \((\S+), NPO (\S+)\) times "
                r"(\d+) for the tiny model; NPO beta (\S+) ")
    b = methods.BaselineConfig
    assert (int(r), int(batch), int(epochs), num(beta)) == (b.lora_r, b.batch_size, b.epochs, b.beta)
    assert (num(lr), num(npo_lr), num(scale)) == (methods.PAPER_LR["ga"], methods.PAPER_LR["npo"], methods.LR_SCALE)


def test_quoted_line_counts():
    """README's "about N lines" of a reading track: within 10 % of the lines of the files its next block lists."""
    text = README.read_text()
    quoted = re.findall(r"about ([\d,]+) lines.*?\n```\n(.*?)```", text, re.S)
    assert len(quoted) == 2, "README quotes a line count for each of the two tracks"
    for n, block in quoted:
        files = [line.split()[0] for line in block.splitlines()]
        assert files and all(f.endswith(".py") for f in files), block
        total = sum(len((ROOT / "asru_min" / f).read_text().splitlines()) for f in files)
        assert abs(total - num(n)) <= 0.1 * total, (files, n, total)


# --- names and flags the docs cite
CITED = re.compile(r"`(asru_min/[\w/]+\.py|[a-z_]+\.py):([A-Za-z_][\w.]*)`")  # `asru_min/steer.py:forget_loss`
MODULES = "|".join(p.stem for p in (ROOT / "asru_min").glob("*.py") if p.stem != "__init__")
DOTTED = re.compile(rf"`({MODULES})\.([A-Za-z_]\w*)(?![\w.])")  # `metrics.judge`, `hooks.ablate_direction(...)`


def _resolve(path: str, dotted: str) -> bool:
    module = "asru_min/" + path if not path.startswith("asru_min/") else path
    file = ROOT / module
    if not file.exists():
        return False
    name = module[:-3].replace("/", ".").removesuffix(".__init__")
    obj = __import__(name, fromlist=["_"])
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


@pytest.mark.parametrize("doc", [README, METHOD, QWEN3VL], ids=lambda p: p.name)
def test_cited_names_exist(doc):
    text = flat(doc)
    cited = CITED.findall(text) + [(f"{m}.py", n) for m, n in DOTTED.findall(text) if n not in ("py", "safetensors")]
    assert cited
    missing = sorted({f"{p}:{n}" for p, n in cited if not _resolve(p, n)})
    assert not missing, f"{doc.name} cites names that do not exist: {missing}"


def _known_flags() -> set:
    """Every flag an entry point of this repository defines: TrainConfig's and PretrainConfig's (one per field)
    and every "--x" string passed to add_argument in asru_min/ and examples/."""
    from asru_min.world.pretrain import PretrainConfig  # python -m asru_min.world.pretrain: one flag per field

    flags = {"--" + f.name.replace("_", "-") for c in (TrainConfig, PretrainConfig) for f in dataclasses.fields(c)}
    flags |= {"--no-" + f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig) if f.type in (bool, "bool")}
    for path in list((ROOT / "asru_min").rglob("*.py")) + list((ROOT / "examples").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
    return flags


OTHER_PROGRAMS = {"--nproc_per_node", "--json_path"}  # torchrun's, the release judge's


@pytest.mark.parametrize("doc", [README, METHOD, QWEN3VL, RUNNING], ids=lambda p: p.name)
def test_flags_exist(doc):
    shown = set(re.findall(r"(?<![\w-])--[a-z][\w-]*[a-z0-9_]", doc.read_text())) - OTHER_PROGRAMS
    unknown = sorted(shown - _known_flags())
    assert not unknown, f"{doc.name} shows flags no entry point defines: {unknown}"


def _package_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module path relative to asru_min/ with dots, imported names) of every relative import in `path`, those
    inside functions included."""
    package = path.relative_to(ROOT / "asru_min").parent.parts
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - node.level + 1])
            out.append((".".join(base + ([node.module] if node.module else [])), [a.name for a in node.names]))
    return out


def test_method_track_imports_run_forward():
    """README: each file of the method track imports only the files above it (and files outside the track); no
    file of the package outside world/ imports a private name of world/."""
    block = re.search(r"\*\*The method\*\*.*?\n```\n(.*?)```", README.read_text(), re.S).group(1)
    track = [line.split()[0].removesuffix(".py") for line in block.splitlines()]
    assert track[0] == "data" and track[-1] == "train"
    for i, name in enumerate(track):
        for module, names in _package_imports(ROOT / "asru_min" / f"{name}.py"):
            targets = [module] if module else names  # `from . import distributed`
            later = [t for t in targets if t in track[i:]]
            assert not later, f"{name}.py imports {later}, not above it in the README's method track"
    for path in (ROOT / "asru_min").rglob("*.py"):
        if "world" not in path.relative_to(ROOT / "asru_min").parts:
            private = [(module, name) for module, names in _package_imports(path) if module.startswith("world")
                       for name in names if name.startswith("_")]
            assert not private, f"{path.name} imports private names of world/: {private}"
