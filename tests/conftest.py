from contextlib import contextmanager

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test model is tiny: one torch thread avoids the thread start/spin overhead that dominates such
    small matrices (2 threads ran 10-20x slower on the shared 2-core machines)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny random Qwen3-VL checkpoint folder (2-layer decoder, 32x32 images) with a tokenizer of the world."""
    from asru_min.world.people import World
    from asru_min.world.pretrain import PretrainConfig, build

    cfg = PretrainConfig(num_people=20, vocab_size=400, hidden_size=48, intermediate_size=96, num_layers=2,
                         num_heads=2, num_kv_heads=1, vision_hidden=32, vision_intermediate=64, vision_depth=2,
                         vision_heads=2, deepstack="0", image_size=32)
    model, processor = build(cfg, World.generate(20, 0))
    path = tmp_path_factory.mktemp("tiny_ckpt")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def load_example(name: str):
    """Import examples/<name>.py (the examples folder is not a package)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"{name}_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@contextmanager
def layer_outputs(model, layer: int):
    """The output h (B, L, D) of text-decoder layer `layer` on every forward inside the block, kept with its graph,
    read through the library's one hook registration (`hooks.hook`, removed in `finally`)."""
    from asru_min.hooks import decoder_layer, hook

    outputs = []
    with hook(decoder_layer(model, layer), lambda module, args, h: outputs.append(h)):
        yield outputs
