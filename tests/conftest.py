import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def batch(n_in: int, n_classes: int, b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n_in, generator=g), torch.randint(0, n_classes, (b,), generator=g)


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over a fresh folder: (folder, base URL); see data_files.serving."""
    from data_files import serving

    with serving(tmp_path / "served") as served:
        yield served
