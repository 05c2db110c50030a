"""Shared fixtures: a tiny CLIP saved locally, a synthetic dataset, a tiny MIMIC. Nothing is downloaded."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a hub lookup must fail at once, never wait for the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from mimic.data.readers import Dataset, load_config  # noqa: E402
from mimic.data.synthetic import make_dataset, make_tiny_clip  # noqa: E402
from mimic.model.matcher import Features  # noqa: E402
from mimic.model.mimic import MIMIC, MIMICConfig  # noqa: E402
from mimic.train.checkpoint import save_model  # noqa: E402

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_IMAGE = os.path.join(ROOT, "assets", "demo_kb", "mention_image", "hopper_face_crop.jpg")


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


# -- the demo, served for real ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(tmp_path, checkpoint=None, extra_env=None, timeout=180):
    port = free_port()
    (tmp_path / "tmp").mkdir(exist_ok=True)  # the app's temporary files (Gradio's uploads included), for inspection
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "MIMIC_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(tmp_path / "tmp" / "gradio"), "TMPDIR": str(tmp_path / "tmp"), **(extra_env or {})}
    if checkpoint:
        env["MIMIC_CHECKPOINT"] = checkpoint
    log = open(tmp_path / f"app-{port}.log", "w")
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    from gradio_client import Client
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited: {open(tmp_path / f'app-{port}.log').read()[-3000:]}")
        try:
            client = Client(url, verbose=False)
            client.predict("Hopper painted Nighthawks.", "Hopper", None, 3, api_name="/link")
            return process, url, client
        except Exception:
            time.sleep(1.0)
    process.kill()
    raise RuntimeError(f"app.py was not ready in {timeout} s: {open(tmp_path / f'app-{port}.log').read()[-3000:]}")


@pytest.fixture(scope="session")
def app_server(tmp_path_factory, tiny_clip):
    """The app on a trained-format tiny checkpoint (random weights), so every panel has content."""
    tmp = tmp_path_factory.mktemp("app")
    checkpoint = str(tmp / "ckpt")
    save_model(MIMIC.from_encoder(MIMICConfig(encoder=tiny_clip), seed=3), checkpoint)
    process, url, client = start_app(tmp, checkpoint)
    yield url, client, tmp
    process.terminate()
    process.wait(20)




@pytest.fixture()
def browser_page():
    """A page of headless Debian Chromium, driven by Playwright (skipped, saying why, without Chromium)."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        if os.environ.get("MIMIC_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield browser.new_page(viewport={"width": 1400, "height": 1800})
        browser.close()
