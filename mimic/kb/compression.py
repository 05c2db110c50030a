"""How a store keeps each entity-side term on disk: one codec per term, chosen by the store's precision.

Codecs (per entity; a "row" is the last axis, e.g. one token of tglu.query):
    float32    exact
    float24    float32 without the last byte of its mantissa (rounded), kept as a bfloat16 plane and a
               byte plane so decoding is two shifts: relative error ≤ 2⁻¹⁶ per value
    float16    half the bytes; relative error ≤ 2⁻¹¹ per value
    affine8    uint8 codes + per-row minimum and step (float16): x ≈ lo + code · step
    affine4    the same with 4-bit codes, two per byte
    centred4   the entity's mean row (float16), and affine4 codes of each row minus it: the rows of a
               text share much of their value, so the codes spend their 16 levels on what differs

Precisions (bytes per entity at the real dimensions, 40 text tokens, 50 image tokens, 96-d units):
    compact  (default)  tglu.query centred4 (2,272), cmfu.alpha affine8 (54); tglu.t_g, tglu.cls,
                        cmfu.f, vdlu.e2m.q, vdlu.m2e.k, vdlu.m2e.p float24 (2,976):              5,302 B
    mixed    (format 1) tglu.query and cmfu.alpha float16, the rest float32:                     11,748 B
    float32             every term exact:                                                        19,528 B

Why this split (measured on the scale benchmark's random weights at 110,000 entities, 200 queries,
re-scoring each query's float32 top-40; S has a standard deviation of 7.1 there; standard deviations
of the change of S over the float32 top-10):
  - tglu.query is two thirds of the bytes but reaches S only through a softmax and a mean over 40
    tokens, which average its rounding out: affine4 changes S by 4.4e-4, centred4 by 2.5e-4 (5-bit
    codes would give 1.3e-4 for 480 B more, beyond the 6 kB a store may take at a million entities);
    a random rotation of the rows or a Gaussian codebook did not help (the rows are already Gaussian);
  - tglu.t_g, tglu.cls and cmfu.f enter S through plain dot products, where rounding adds up
    unaveraged: float16 for tglu.t_g alone changes S by 7.8e-4, int8 by 2.8e-2, so they keep 24 bits;
  - vdlu.e2m.q, vdlu.m2e.k, vdlu.m2e.p pass through LayerNorms: float16 costs 4.6e-4 (as much as
    affine4 codes for tglu.query, and the top-10 order of 2 % of queries), float24 4e-5;
  - cmfu.alpha is only drawn (the CMFU heatmap), never scored.
`vdlu.e2m.q_norm` is not stored in format 2: it is layer_norm(vdlu.e2m.q), recomputed at query time
(`DERIVED`). docs/store.md has the figures measured at scale. Coded values are copied, never coded
twice, when a store is rewritten at the same precision (`kb compact`): centred4 is not idempotent.
"""
import warnings

import numpy as np
import torch

from .versions import StoreError

PRECISIONS = {
    "compact": {"tglu.query": "centred4", "cmfu.alpha": "affine8", "vdlu.e2m.q": "float24",
                "vdlu.m2e.k": "float24", "vdlu.m2e.p": "float24", "tglu.t_g": "float24", "tglu.cls": "float24",
                "cmfu.f": "float24"},
    "mixed": {"tglu.query": "float16", "cmfu.alpha": "float16"},
    "float32": {},
}
DEFAULT_PRECISION = "compact"
DERIVED = ("vdlu.e2m.q_norm",)  # recomputed from vdlu.e2m.q by the matcher (see mimic/kb/search.py)
FLOAT16_MAX = 65504.0


def codec_of(name: str, precision: str) -> str:
    return PRECISIONS[precision].get(name, "float32")


def files_of(name: str, codec: str) -> list:
    """The array files (inside a segment's terms/) that hold one term."""
    if codec == "centred4":
        return [f"{name}.npy", f"{name}.lo.npy", f"{name}.step.npy", f"{name}.centre.npy"]
    if codec.startswith("affine"):
        return [f"{name}.npy", f"{name}.lo.npy", f"{name}.step.npy"]
    return [f"{name}.npy", f"{name}.lo.npy"] if codec == "float24" else [f"{name}.npy"]


def stored_shapes(codec: str, shape: tuple) -> list:
    """Per-entity (shape, dtype) of each file of a term whose values have per-entity `shape`."""
    rows = tuple(shape[:-1])
    if codec == "centred4":
        return stored_shapes("affine4", shape) + [(tuple(shape[:-2]) + (shape[-1],), np.float16)]
    if codec == "affine4":
        return [(rows + ((shape[-1] + 1) // 2,), np.uint8), (rows, np.float16), (rows, np.float16)]
    if codec == "affine8":
        return [(tuple(shape), np.uint8), (rows, np.float16), (rows, np.float16)]
    if codec == "float24":
        return [(tuple(shape), np.uint16), (tuple(shape), np.uint8)]
    return [(tuple(shape), np.float16 if codec == "float16" else np.float32)]


def bytes_per_entity(codec: str, shape: tuple) -> int:
    return sum(int(np.prod(s)) * np.dtype(t).itemsize for s, t in stored_shapes(codec, shape))


class CodecError(StoreError):
    """Values a codec cannot hold (e.g. beyond float16's range)."""


def encode(codec: str, values: np.ndarray, name: str = "term") -> list:
    """float values [n, ...] -> the arrays of `files_of` (same order)."""
    values = np.asarray(values, dtype=np.float32)
    if not np.isfinite(values).all():
        raise CodecError(f"{name} has values that are not finite (NaN or infinite)")
    if codec == "float32":
        return [values]
    if codec == "float16":
        if np.abs(values).max(initial=0) > FLOAT16_MAX:
            raise CodecError(f"{name} has values beyond float16's range; use --precision float32")
        return [values.astype(np.float16)]
    if codec == "float24":
        rounded = values.view(np.uint32) + np.uint32(0x80)  # round to nearest on the dropped byte
        return [(rounded >> 16).astype(np.uint16), ((rounded >> 8) & 0xFF).astype(np.uint8)]
    if codec == "centred4":
        centre = values.mean(axis=-2).astype(np.float16)
        if not np.isfinite(centre).all():
            raise CodecError(f"{name} has values beyond float16's range; use --precision float32")
        return _affine(values - centre.astype(np.float32)[..., None, :], 4, name) + [centre]
    return _affine(values, 4 if codec == "affine4" else 8, name)


def _affine(values: np.ndarray, bits: int, name: str) -> list:
    """Values -> [codes (two per byte when 4-bit), per-row minimum, per-row step]."""
    levels = 2 ** bits - 1
    lo = values.min(axis=-1).astype(np.float16)
    span = values.max(axis=-1) - lo.astype(np.float32)
    step = (span / levels).astype(np.float16)
    if not (np.isfinite(lo).all() and np.isfinite(step).all()):
        raise CodecError(f"{name} has values beyond float16's range; use --precision float32")
    # codes are computed against the rounded lo and step, so decoding is consistent with them
    safe = np.where(step > 0, step.astype(np.float32), 1.0)[..., None]
    codes = np.clip(np.rint((values - lo.astype(np.float32)[..., None]) / safe), 0, levels).astype(np.uint8)
    if bits == 4:
        if codes.shape[-1] % 2:
            codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (1,), np.uint8)], axis=-1)
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return [codes, lo, step]


def decode(codec: str, arrays: list, width: int) -> np.ndarray:
    """The arrays of one term (rows already selected) -> float32 values; `width` = the last axis."""
    if codec in ("float32", "float16"):
        return np.asarray(arrays[0], dtype=np.float32)
    if codec == "float24":
        high, low = arrays
        out = np.zeros(high.shape, np.uint32)  # little-endian: byte 0 stays 0, byte 1 = low, bytes 2-3 = high
        out.view(np.uint16)[..., 1::2] = high
        out.view(np.uint8)[..., 1::4] = low
        return out.view(np.float32)
    if codec == "centred4":
        return decode("affine4", arrays[:3], width) + np.asarray(arrays[3], dtype=np.float32)[..., None, :]
    codes, lo, step = (np.asarray(a) for a in arrays)
    if codec == "affine4":
        unpacked = np.empty(codes.shape[:-1] + (codes.shape[-1] * 2,), np.uint8)
        unpacked[..., 0::2] = codes & 0x0F
        unpacked[..., 1::2] = codes >> 4
        codes = unpacked[..., :width]
    return codes.astype(np.float32) * step.astype(np.float32)[..., None] + lo.astype(np.float32)[..., None]


def to_tensor(values: np.ndarray) -> torch.Tensor:
    """Decoded values as a float32 tensor, without a copy: a slice of a read-only memory map stays one
    (nothing writes into terms, so PyTorch's warning about it is silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(values, dtype=np.float32))


def as_stored(name: str, values: np.ndarray, precision: str) -> np.ndarray:
    """Float values of the term `name`, rounded as a store of `precision` keeps them (coded and decoded):
    what an entity kept outside a store needs to score exactly as it would inside one."""
    codec = codec_of(name, precision)
    values = np.asarray(values, dtype=np.float32)
    return decode(codec, encode(codec, values, name), values.shape[-1])


def complete(matcher, flat: dict) -> dict:
    """Flat float32 tensors of entity terms, with what the store leaves out (`DERIVED`) recomputed by the
    matcher: vdlu.e2m.q_norm = layer_norm(vdlu.e2m.q). Adds to `flat` and returns it."""
    if "vdlu.e2m.q" in flat and "vdlu.e2m.q_norm" not in flat:
        with torch.no_grad():
            flat["vdlu.e2m.q_norm"] = matcher.vdlu.dual_ent2men.layer_norm(flat["vdlu.e2m.q"])
    return flat
