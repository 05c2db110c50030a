"""Whatever a user or a file throws at the app, the API or the CLI: a clear message, the server keeps
serving, no data is lost."""
import contextlib
import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mimic.data.readers import DataError, read_kb, read_mentions, read_plain_entities, read_qid2id
from mimic.fileio import OutputError
from mimic.linker import QueryError, check_query, check_top_k
from mimic.model.images import ImageError, ImagePipeline, load_image_processor, open_image
from tests.conftest import EXAMPLE_IMAGE

GOOD = ("A portrait of Hopper was unveiled at the gallery.", "Hopper")


# -- images ----------------------------------------------------------------------------------------

def png_bomb(path, side):
    """A real side x side black grayscale PNG, written row by row: about 100 kB on disk, 900 MB decoded."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    packer = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + one byte per pixel
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)) +
                chunk(b"IDAT", body) + chunk(b"IEND", b""))


def save(image, path, **kwargs):
    image.save(path, **kwargs)
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """One file of every awkward kind."""
    d = tmp_path_factory.mktemp("images")
    photo = Image.open(EXAMPLE_IMAGE).convert("RGB")
    out = {"empty": d / "empty.jpg", "not_image": d / "notes.jpg", "svg": d / "drawing.svg"}
    out["empty"].write_bytes(b"")
    out["not_image"].write_text("these are my notes, not a picture")
    out["svg"].write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" '
                          'height="10"/></svg>')
    full = io.BytesIO()
    photo.save(full, "JPEG", quality=90)
    (d / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    out["truncated"] = d / "truncated.jpg"
    out["bomb"] = d / "bomb.png"
    png_bomb(out["bomb"], 30_000)
    frames = [Image.new("RGB", (60, 40), c) for c in ((200, 0, 0), (0, 200, 0))]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out["gif"] = d / "anim.gif"
    out["png16"] = save(Image.fromarray((np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)),
                        d / "deep.png")
    out["cmyk"] = save(photo.convert("CMYK"), d / "cmyk.jpg")
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    out["rgba"] = save(rgba, d / "rgba.png")
    out["palette"] = save(photo.convert("P"), d / "palette.png")
    out["gray"] = save(photo.convert("L"), d / "gray.jpg")
    out["tiny"] = save(Image.new("RGB", (1, 1), (10, 20, 30)), d / "tiny.png")
    sideways = photo.transpose(Image.Transpose.ROTATE_90)  # stored sideways, EXIF says: rotate back
    exif = Image.Exif()
    exif[0x0112] = 6
    out["exif"] = save(sideways, d / "exif.jpg", exif=exif.tobytes(), quality=95)
    out["upright_reference"] = save(Image.open(out["exif"]).transpose(Image.Transpose.ROTATE_270), d / "up.png")
    return {k: str(v) for k, v in out.items()}


@pytest.mark.parametrize("kind,message", [("empty", "the file is empty"), ("not_image", "not an image PIL can read"),
                                          ("truncated", "damaged or truncated"), ("svg", "SVG drawings are not"),
                                          ("bomb", "more than 179 megapixels .PIL refuses it as a decompression bomb")])
def test_unusable_images_are_refused_with_a_reason(images, kind, message):
    with pytest.raises(ImageError, match=message):
        open_image(images[kind])


def test_a_decompression_bomb_is_refused_quickly_with_bounded_memory(images):
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    with pytest.raises(ImageError):
        open_image(images["bomb"])
    assert time.perf_counter() - t < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # kB: nothing was decoded


@pytest.mark.parametrize("kind", ["gif", "png16", "cmyk", "rgba", "palette", "gray", "tiny", "exif"])
def test_awkward_but_valid_images_become_upright_rgb(images, kind):
    image = open_image(images[kind])
    assert image.mode == "RGB" and image.width >= 1
    pipeline = ImagePipeline(load_image_processor("openai/clip-vit-base-patch32"))
    assert pipeline(images[kind]).abs().sum() > 0  # not replaced by the zero image


def test_details_of_conversions(images):
    red = open_image(images["gif"]).getpixel((5, 5))  # the first frame (red), not the second (green)
    assert red[0] > 150 and red[1] < 50
    deep = open_image(images["png16"])
    assert deep.getpixel((0, 0))[0] == 0 and deep.getpixel((63, 47))[0] == 255  # scaled, not clipped white
    assert open_image(images["rgba"]).getpixel((5, 5))[0] > 100  # half-transparent over white, not black
    upright = open_image(images["exif"])
    reference = Image.open(images["upright_reference"]).convert("RGB")
    assert upright.size == reference.size  # EXIF orientation applied: encoded (and drawn) upright
    assert np.abs(np.asarray(upright, dtype=int) - np.asarray(reference, dtype=int)).mean() < 3


def test_missing_images_are_counted_in_the_log(tiny_model, caplog, tmp_path):
    from mimic.model.encoding import encode_all
    with caplog.at_level("WARNING"):
        encode_all(tiny_model, ["a [SEP] b"] * 3, [str(tmp_path / "gone.jpg"), None, EXAMPLE_IMAGE], "entity",
                   progress=False)
    assert "1 of 2 entity images were missing or unreadable and were encoded as the zero image" in caplog.text


# -- text and top k --------------------------------------------------------------------------------

@pytest.mark.parametrize("sentence,mention", [
    ("東京タワーは東京の電波塔です。", "東京タワー"), ("שלום עליכם, אמר דוד", "דוד"), ("I ❤️ Paris 🗼 in spring", "Paris 🗼"),
    ("Cafe\u0301 de Flore is in Paris", "Café de Flore"), ("Obama\x00 spoke\x1b[31m in Paris", "Paris")])
def test_unusual_text_is_accepted(sentence, mention):
    clean_sentence, clean_mention = check_query(sentence, mention)
    assert clean_mention.casefold() in clean_sentence.casefold()
    assert not any(ord(c) < 32 for c in clean_sentence)


def test_top_k_bounds():
    assert check_top_k(500, 51) == 51 and check_top_k("3", 51) == 3
    for bad in (0, -2):
        with pytest.raises(QueryError, match="at least 1"):
            check_top_k(bad, 51)
    with pytest.raises(QueryError, match="whole number"):
        check_top_k("many", 51)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.text(max_size=40))
def test_fuzz_query_checks_never_crash(sentence, mention):
    try:
        clean_sentence, clean_mention = check_query(sentence, mention)
    except QueryError as e:
        assert str(e)
        return
    assert clean_mention and clean_mention.casefold() in clean_sentence.casefold()


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=120), st.text(max_size=20), st.integers(-2, 5))
def test_fuzz_mention_highlight_never_crashes(sentence, mention, chosen):
    from demo.inputs import describe_mention
    highlighted, _ = describe_mention(sentence, mention, chosen)
    assert "".join(t for t, _ in highlighted if _ != "problem") in (sentence, "")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(
                        st.sampled_from(["id", "entity_name", "attr", "image_list", "sentence", "mentions",
                                         "imgPath", "answer", "name", "description", "image", "qid", "x"]),
                        children, max_size=6), max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(JSON)
def test_fuzz_json_readers_raise_only_data_errors(tmp_path, value):
    path = tmp_path / "file.json"
    path.write_text(json.dumps(value))
    for reader in (read_kb, read_mentions, read_plain_entities, read_qid2id):
        try:
            reader(str(path))
        except DataError as e:
            assert "file.json" in str(e)


# -- checkpoints and stores: see test_checkpoint.py and test_store.py; faults ------------------------

def _encode_cmd(config, checkpoint, out):
    return [sys.executable, "-m", "mimic", "encode-kb", "--config", config, "--checkpoint", checkpoint, "--out", out,
            "--chunk-size", "2", "--batch-size", "2", "--no-progress", "--device", "cpu"]


def test_encode_kb_killed_at_random_moments_then_resumed_is_identical(tiny_model, synth_config_path, tmp_path):
    from mimic.train.checkpoint import save_model
    from tests.kb.test_store import assert_same_store
    checkpoint = str(tmp_path / "ckpt")
    save_model(tiny_model, checkpoint)
    reference = str(tmp_path / "reference")
    assert subprocess.run(_encode_cmd(synth_config_path, checkpoint, reference), capture_output=True).returncode == 0
    out = str(tmp_path / "kb")
    rng = random.Random(5)
    kills = 0
    chunks = os.path.join(out + ".partial", "done")

    def finished_chunks():
        return len([f for f in os.listdir(chunks) if not f.startswith(".")]) if os.path.isdir(chunks) else 0

    # four runs, each killed at a random moment soon after it finished a chunk of its own (a short delay:
    # the tiny model writes a chunk in milliseconds, and a long one lets a fast machine finish the KB)
    for _ in range(4):
        process = subprocess.Popen(_encode_cmd(synth_config_path, checkpoint, out), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        before, deadline = finished_chunks(), time.time() + 60
        while time.time() < deadline and process.poll() is None and finished_chunks() == before:
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.004))
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    assert not os.path.exists(os.path.join(out, "manifest.json")), "the KB was finished before the kills"
    assert subprocess.run(_encode_cmd(synth_config_path, checkpoint, out), capture_output=True).returncode == 0
    assert kills >= 3
    assert_same_store(out, reference)
    assert not [e for e in os.listdir(tmp_path) if e.endswith((".tmp", ".old", ".partial"))]  # nothing left over


@contextlib.contextmanager
def small_filesystem(path, read_only=False, size="96k"):
    """A real read-only or nearly full filesystem (tmpfs), or None where mounting is not allowed."""
    os.makedirs(path, exist_ok=True)
    options = f"{'ro,' if read_only else ''}size={size}"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _simulate(monkeypatch, code):
    """Where no filesystem can be mounted: the same failure, raised by the first write."""
    import mimic.fileio as fileio
    real = fileio.tempfile.mkstemp

    def failing(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(fileio.tempfile, "mkstemp", failing)
    monkeypatch.setattr(fileio.tempfile, "mkdtemp", failing)
    return real


@pytest.mark.parametrize("read_only,message", [(True, "the folder is not writable"), (False, "the disk is full")])
def test_unwritable_output_gives_a_clear_message_and_no_half_store(tiny_model, synth_dataset, tmp_path, monkeypatch,
                                                                   read_only, message):
    from mimic.kb.encode import encode_store
    with small_filesystem(tmp_path / "fs", read_only) as fs:
        if fs is None:
            _simulate(monkeypatch, errno.EROFS if read_only else errno.ENOSPC)
        out = str((fs or tmp_path) / "kb")
        with pytest.raises(OutputError, match=message):
            encode_store(tiny_model, synth_dataset.entities, synth_dataset.kb_images, out, "kb", progress=False)
        assert not os.path.exists(os.path.join(out, "manifest.json"))
        if fs is not None:  # at most the store's folder, marked, empty and locked from the job's start
            assert [e for e in os.listdir(fs) if not e.endswith(".partial")] in ([], ["kb"])
            if os.path.exists(out):
                assert set(os.listdir(out)) <= {".lock", ".mimic-el-kb", "segments"}
                assert not os.path.exists(os.path.join(out, "segments")) or not os.listdir(os.path.join(out, "segments"))


def test_cli_reports_an_unwritable_output_in_one_line(synth_config_path, tmp_path):
    with small_filesystem(tmp_path / "ro", read_only=True) as fs:
        if fs is None:
            pytest.skip("cannot mount a read-only filesystem here; covered by the simulated test above")
        out = subprocess.run([sys.executable, "-m", "mimic", "evaluate", "--config", synth_config_path, "--init",
                              "random", "--metrics-out", str(fs / "m.json"), "--no-progress", "--device", "cpu"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert f"error: cannot write {fs / 'm.json'}: the folder is not writable" in out.stderr


# -- the served app: every bad request answered plainly, and the next good one still served --------

def bad_requests(images):
    long_sentence = ("Hopper " + "word " * 20_000)[:100_000]
    return [(("", "Hopper", None, 3), "Please type a sentence"),
            (("   \t ", "Hopper", None, 3), "Please type a sentence"),
            (("Hopper painted.", "", None, 3), "Please type the mention"),
            (("Hopper painted.", "Turing", None, 3), "does not occur in the sentence"),
            (("Hopper", "Hopper painted a lot", None, 3), "longer than the sentence"),
            ((*GOOD, None, 0), "Top k must be a whole number from 1 to 20"),
            ((*GOOD, None, -3), "Top k must be a whole number from 1 to 20"),
            ((*GOOD, None, 2.5), "Top k must be a whole number from 1 to 20"),
            ((*GOOD, images["empty"], 3), "empty"), ((*GOOD, images["truncated"], 3), "damaged or truncated"),
            ((*GOOD, images["not_image"], 3), "not an image"), ((*GOOD, images["bomb"], 3), "megapixels"),
            ((*GOOD, images["svg"], 3), "SVG"),
            ((long_sentence, "Hopper", None, 3), None)]  # accepted: the 40-token truncation keeps the mention


def test_the_app_answers_every_bad_request_plainly_and_keeps_serving(app_server, images):
    from gradio_client import Client, handle_file
    url, _, _ = app_server
    client = Client(url, verbose=False)
    good = client.predict(*GOOD, None, 3, api_name="/link")
    for (sentence, mention, image, top_k), message in bad_requests(images):
        t = time.perf_counter()
        args = (sentence, mention, handle_file(image) if image else None, top_k)
        if message is None:
            assert client.predict(*args, api_name="/link")["results"]
        else:
            with pytest.raises(Exception, match=message) as caught:
                client.predict(*args, api_name="/link")
            assert "Traceback" not in str(caught.value)
        assert time.perf_counter() - t < 30
        assert client.predict(*GOOD, None, 3, api_name="/link")["results"] == good["results"]


def test_the_app_accepts_awkward_images_and_large_top_k(app_server, images):
    from gradio_client import Client, handle_file
    url, _, _ = app_server
    client = Client(url, verbose=False)
    for kind in ("gif", "png16", "cmyk", "rgba", "palette", "gray", "tiny", "exif"):
        result = client.predict(*GOOD, handle_file(images[kind]), 3, api_name="/link")
        assert len(result["results"]) == 3, kind
    assert len(client.predict(*GOOD, None, 20, api_name="/link")["results"]) == 20
    with pytest.raises(Exception, match="Top k must be a whole number from 1 to 20"):  # the slider's bound, said
        client.predict(*GOOD, None, 1000, api_name="/link")
    assert len(client.predict(*GOOD, None, 3, api_name="/link")["results"]) == 3
