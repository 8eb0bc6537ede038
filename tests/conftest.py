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


def load_example(name: str):
    """Import examples/<name>.py (the examples folder is not a package)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"{name}_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
