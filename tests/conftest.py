"""Shared fixtures: a tiny CLIP saved locally, a synthetic dataset, a tiny MIMIC. Nothing is downloaded."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a hub lookup must fail at once, never wait for the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from mimic.data import Dataset, load_config  # noqa: E402
from mimic.matcher import Features  # noqa: E402
from mimic.model import MIMIC, MIMICConfig  # noqa: E402
from mimic.synthetic import make_dataset, make_tiny_clip  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP saved with save_pretrained: loaded through the users' code path."""
    return make_tiny_clip(str(tmp_path_factory.mktemp("tiny_clip")), seed=0)


@pytest.fixture(scope="session")
def synth_config_path(tmp_path_factory, tiny_clip):
    return make_dataset(str(tmp_path_factory.mktemp("synth")), encoder=tiny_clip)


@pytest.fixture(scope="session")
def synth_dataset(synth_config_path):
    return Dataset(load_config(synth_config_path))


@pytest.fixture()
def tiny_model(tiny_clip):
    return MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=1).eval()


def random_features(n, seed, text_dim=12, token_dim=10, dv=8, text_len=5, image_tokens=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return Features(r(n, text_dim), r(n, text_len, token_dim), r(n, dv), r(n, image_tokens, dv))


def randomize_(module, seed=0, scale=0.5):
    """Give every parameter (LayerNorms included) random values, so no formula hides behind 1s and 0s."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module
