import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def batch(n_in: int, n_classes: int, b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n_in, generator=g), torch.randint(0, n_classes, (b,), generator=g)
