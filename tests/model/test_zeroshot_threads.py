"""Zero-shot weights do not depend on the thread count (issue 18, item 8): drawn under OMP_NUM_THREADS=1
and =2, or after torch.set_num_threads, they are bit-equal and give one fingerprint, so a store encoded
on one machine (a --shard of it) is accepted on another with another number of cores."""
import json
import os
import subprocess
import sys

import torch

from mimic.model.zeroshot import complement_basis, one_thread

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DRAW = r"""
import hashlib, json, sys
import torch
from mimic.kb.fingerprint import model_fingerprints
from mimic.model.mimic import MIMIC, MIMICConfig
from mimic.model.zeroshot import zero_shot_init

out = []
for threads in (None, int(sys.argv[2])):
    if threads:
        torch.set_num_threads(threads)
    before = torch.get_num_threads()
    model = zero_shot_init(MIMIC.from_encoder(MIMICConfig(encoder=sys.argv[1]), seed=0))
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        if not name.startswith("encoder.clip."):
            h.update(name.encode() + value.contiguous().view(torch.uint8).numpy().tobytes())
    out.append({"threads": before, "after": torch.get_num_threads(), "weights": h.hexdigest(),
                "checkpoint": model_fingerprints(model)["checkpoint"]})
print(json.dumps(out))
"""


def draw(clip: str, omp: int, then: int) -> list:
    env = {**os.environ, "OMP_NUM_THREADS": str(omp), "MKL_NUM_THREADS": str(omp)}
    done = subprocess.run([sys.executable, "-c", DRAW, clip, str(then)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_zero_shot_weights_are_bit_equal_whatever_the_thread_count(tiny_clip):
    # Before the fix the tiny CLIP's weights differed between these: float32 QR and SVD split by thread.
    runs = draw(tiny_clip, omp=1, then=2) + draw(tiny_clip, omp=2, then=1)
    assert [r["threads"] for r in runs] == [1, 2, 2, 1]  # each count really was in force
    assert all(r["after"] == r["threads"] for r in runs)  # the init leaves the caller's thread count alone
    assert len({r["weights"] for r in runs}) == 1, runs
    assert len({r["checkpoint"] for r in runs}) == 1, runs


def test_one_thread_restores_the_count_even_when_the_block_fails():
    threads = torch.get_num_threads()
    try:
        with one_thread():
            assert torch.get_num_threads() == 1
            raise KeyError("boom")
    except KeyError:
        pass
    assert torch.get_num_threads() == threads


def test_complement_basis_of_awkward_directions():
    """Hostile directions: a negative or zero first coordinate, an axis, a tiny or float32 vector. The basis
    is orthonormal, orthogonal to the direction, and one bit of change in the direction moves it by about
    one bit (an SVD of I - d dᵀ could return an unrelated basis)."""
    g = torch.Generator().manual_seed(3)
    dim = 64
    random = torch.randn(dim, generator=g, dtype=torch.float64)
    axis, minus_axis = torch.eye(dim, dtype=torch.float64)[0], -torch.eye(dim, dtype=torch.float64)[0]
    zero_first = random.clone()
    zero_first[0] = 0.0
    for d in (random, -random, axis, minus_axis, zero_first, random * 1e-30, random.float()):
        basis = complement_basis(d)
        unit = d.double() / d.double().norm()
        assert basis.shape == (dim, dim - 1) and basis.dtype == torch.float64
        torch.testing.assert_close(basis.T @ basis, torch.eye(dim - 1, dtype=torch.float64), atol=1e-12, rtol=0)
        assert (unit @ basis).abs().max() < 1e-12
    nudged = random.clone()
    nudged[5] = torch.nextafter(nudged[5], torch.tensor(1e9, dtype=torch.float64))
    assert (complement_basis(nudged) - complement_basis(random)).abs().max() < 1e-14
