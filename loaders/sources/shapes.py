"""The built-in `shapes` datasets: a primary set of shape classes and an auxiliary set.

Generated from a seed with numpy alone, so the demo and the tests need no download.
Two knobs shape the task (both recorded in `meta`): `classes`, the number of primary shape
classes (10 by default, up to 16), and `difficulty` (0 by default, up to 3; see
`DIFFICULTIES`), which adds clutter, pixel noise and two train-only shortcuts:

- a class colour: on train, a share of each class's shapes is drawn in that class's own
  colour; on test colours are random, so a model that learned colour is wrong there;
- a faint class signature: a fixed low-amplitude grating per class (6/255 per pixel, inside the
  8/255 attack ball, so a non-robust feature) added to a share of train images; test images
  carry the signature of a random class.

With difficulty 0 and 10 classes the sets are exactly the original ones (the `difficulty`
0 renderer draws the same random numbers in the same order):

- primary: ten geometric shapes (circle, square, triangle, ...) at a random position, scale,
  small rotation, random foreground and background colours, a background gradient and pixel
  noise. A small CNN learns them, but colour and position carry no label information.
- aux: `classes` + 10 classes. The first `classes` are *related*: the primary's shapes
  again, drawn in another domain (striped fill, smooth-noise background), so they share the primary's robust
  shape features. The last ten are *unrelated* textures (checkerboards, stripes at random
  angles, smooth noise, gradients, ...) that contain none of the shapes. `meta["related"]`
  records which is which, in class order; this is what BiaMAT's confidence test should find.
  With difficulty > 0 both groups carry the train split's colour and signature statistics
  (unrelated class j those of primary class j mod `classes`): the related classes share the
  primary's robust features (shapes) and its non-robust ones, the unrelated ones only the
  non-robust ones, the two kinds of auxiliary data of the paper's Section 2.1.
  `groups` keeps one kind only: `related` (the `classes` shapes in the other domain) or
  `unrelated` (the ten textures); `all` (the default) keeps both. Kept classes keep their
  names, renderers and flags and are numbered from 0 in the original order; so auxiliary
  sets that stand in for more and less related datasets differ in what they hold, not in how
  it is drawn (the demo scale of `biamat-engine study`).

Every image is rendered as whole-array numpy operations per class (no per-pixel loops);
10k 32x32 images take about a second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from loaders.sources.base import SourceError
from loaders.types import ArrayDataset

SHAPE_NAMES = [
    "circle", "square", "triangle", "cross", "ring",
    "horizontal-bar", "vertical-bar", "diamond", "plus", "star",
    # Only with classes > 10:
    "hexagon", "crescent", "ell", "tee", "arrow", "half-disc",
]
DEFAULT_CLASSES = 10
TEXTURE_NAMES = [
    "checker", "stripes", "plaid", "zigzag", "smooth-noise",
    "white-noise", "gradient", "blocks", "speckle", "waves",
]
KINDS = ("primary", "aux")
GROUPS = ("all", "related", "unrelated")
SPLITS = ("train", "test")
DEFAULT_N = {("primary", "train"): 5000, ("primary", "test"): 1000,
             ("aux", "train"): 5000, ("aux", "test"): 1000}

# Seeds are derived from (seed, kind, split) so train and test never share images.
_KIND_ID = {"primary": 0, "aux": 1}
_SPLIT_ID = {"train": 0, "test": 1}

# Rotations stay small so that the axis-aligned pairs (square/diamond, plus/cross,
# horizontal/vertical bar) remain distinct classes.
_MAX_ROTATION = np.pi / 12


@dataclass(frozen=True)
class Difficulty:
    """What one `difficulty` level adds to the images."""

    clutter: int
    """Small distractor shapes (any family, random colours) drawn under the labelled shape."""
    noise: float
    """Standard deviation of the per-pixel Gaussian noise, in [0, 1] units."""
    colour_bias: float
    """Share of train images whose shape is drawn in its class's own colour (test: never)."""
    signature: float
    """Share of images carrying a faint class grating: their own class's on train, a random
    class's on test."""


DIFFICULTIES = (
    Difficulty(clutter=0, noise=0.06, colour_bias=0.0, signature=0.0),
    Difficulty(clutter=1, noise=0.08, colour_bias=0.5, signature=0.5),
    Difficulty(clutter=2, noise=0.10, colour_bias=0.7, signature=0.7),
    Difficulty(clutter=3, noise=0.12, colour_bias=0.9, signature=0.9),
)
# Inside the 8/255 ball the demo trains and attacks with: an attacker can erase or forge it,
# so it is a non-robust feature, yet over a whole image a linear filter finds it easily.
SIGNATURE_AMPLITUDE = 6 / 255


def class_names(kind: str, classes: int = DEFAULT_CLASSES, groups: str = "all") -> list[str]:
    """Class names of a `shapes` set, in label order."""
    every = _all_class_names(kind, classes)
    return [every[i] for i in _kept_classes(kind, classes, groups)]


def _all_class_names(kind: str, classes: int) -> list[str]:
    _check_kind(kind)
    _check_classes(classes)
    if kind == "primary":
        return list(SHAPE_NAMES[:classes])
    return [f"{s}-textured" for s in SHAPE_NAMES[:classes]] + [f"texture-{t}" for t in TEXTURE_NAMES]


def _kept_classes(kind: str, classes: int, groups: str) -> list[int]:
    """Indices (into the `all` class list) of the classes `groups` keeps, in order."""
    if groups not in GROUPS:
        raise SourceError(f"shapes: unknown groups {groups!r}; expected one of {', '.join(GROUPS)}")
    count = len(_all_class_names(kind, classes))
    if groups == "all":
        return list(range(count))
    if kind != "aux":
        raise SourceError(f"shapes: groups={groups} applies to the aux kind only (the primary set has no groups)")
    return [i for i in range(count) if (i < classes) == (groups == "related")]


def make_shapes(kind: str = "primary", split: str = "train", n: int | None = None,
                size: int = 32, seed: int = 0, difficulty: int = 0,
                classes: int = DEFAULT_CLASSES, groups: str = "all") -> ArrayDataset:
    """Generates one split of a `shapes` set; the same arguments give identical arrays.

    kind: "primary" (`classes` shape classes) or "aux" (`classes` related + 10 unrelated).
    n: number of images (default 5000 for train, 1000 for test); classes are balanced
    (counts differ by at most one) and shuffled.
    difficulty: 0..3, an index into `DIFFICULTIES`; classes: 2..16 primary shape classes.
    groups: aux only: `all`, or `related` / `unrelated` to keep one kind of class.
    """
    _check_kind(kind)
    _check_classes(classes)
    if split not in SPLITS:
        raise SourceError(f"shapes: unknown split {split!r}; expected one of {SPLITS}")
    if not 0 <= difficulty < len(DIFFICULTIES):
        raise SourceError(f"shapes: difficulty must be 0..{len(DIFFICULTIES) - 1}, got {difficulty}")
    if n is None:
        n = DEFAULT_N[(kind, split)]
    if n < 0 or size < 8:
        raise SourceError(f"shapes: need n >= 0 and size >= 8, got n={n}, size={size}")

    rng = np.random.default_rng([seed, _KIND_ID[kind], _SPLIT_ID[split]])
    kept = _kept_classes(kind, classes, groups)  # label -> the class's index among all of them
    names = class_names(kind, classes, groups)
    labels = rng.permutation(np.arange(n) % len(names)).astype(np.int64)
    images = np.empty((n, size, size, 3), np.uint8)
    grid = _grid(size)
    style = _Style(DIFFICULTIES[difficulty], classes, split)
    for label, source in enumerate(kept):
        index = np.flatnonzero(labels == label)
        if len(index) == 0:
            continue
        images[index] = _to_uint8(_render(kind, source, len(index), grid, rng, style), rng, style.level.noise)

    related = [i < classes for i in kept] if kind == "aux" else []
    meta = {"kind": kind, "split": split, "seed": seed, "size": size, "generator": "shapes",
            "difficulty": difficulty, "classes": classes}
    if groups != "all":
        meta["groups"] = groups
    if difficulty:
        meta["difficulty_settings"] = asdict(DIFFICULTIES[difficulty]) | {
            "signature_amplitude": SIGNATURE_AMPLITUDE}
    if kind == "aux":
        meta["related"] = related
        meta["related_to"] = [SHAPE_NAMES[i] if i < classes else None for i in kept]
        if difficulty:
            # Which primary class's colour and signature each auxiliary class carries on train.
            meta["shares_statistics_of"] = [SHAPE_NAMES[i % classes] for i in kept]
    return ArrayDataset(images, labels, names, name=f"shapes-{kind}", meta=meta)


@dataclass(frozen=True)
class _Style:
    level: Difficulty
    classes: int
    split: str

    @property
    def plain(self) -> bool:
        """Difficulty 0: the original renderer, draw for draw."""
        return self.level == DIFFICULTIES[0]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise SourceError(f"shapes: unknown kind {kind!r}; expected one of {KINDS}")


def _check_classes(classes: int) -> None:
    if not 2 <= classes <= len(SHAPE_NAMES):
        raise SourceError(f"shapes: classes must be 2..{len(SHAPE_NAMES)}, got {classes}")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1]: ys (S, 1) and xs (1, S), broadcastable to (m, S, S)."""
    g = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1)
    return g[:, None], g[None, :]


def _to_uint8(image: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """(m, S, S, 3) float -> uint8 with pixel noise, so no two images are exactly alike."""
    noisy = image + rng.normal(0.0, noise, image.shape).astype(np.float32)
    return (np.clip(noisy, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _render(kind: str, label: int, m: int, grid, rng: np.random.Generator, style: _Style) -> np.ndarray:
    """(m, S, S, 3) float32 images of one class."""
    if style.plain:
        if kind == "primary":
            return _render_shape(SHAPE_NAMES[label], m, grid, rng, textured=False)
        if label < style.classes:
            return _render_shape(SHAPE_NAMES[label], m, grid, rng, textured=True)
        return _TEXTURES[TEXTURE_NAMES[label - style.classes]](m, grid, rng)

    level, train = style.level, style.split == "train"
    # Whose colour and signature these images carry: their own (primary) or their assigned
    # primary class's (auxiliary) on train; on test a random class's signature, no colour.
    owner = label % style.classes
    if kind == "aux" and label >= style.classes:
        image = _TEXTURES[TEXTURE_NAMES[label - style.classes]](m, grid, rng)
        if train:
            tint = (rng.random((m, 1, 1, 1)) < level.colour_bias).astype(np.float32)
            image = image * (1 - 0.4 * tint) + 0.4 * tint * _class_colour(owner)
    else:
        colour = level.colour_bias if train and kind == "primary" else 0.0
        image = _render_shape(SHAPE_NAMES[label], m, grid, rng, textured=kind == "aux",
                              clutter=level.clutter, families=style.classes,
                              own_colour=(_class_colour(owner), colour))
    carriers = rng.random(m) < level.signature
    owners = np.full(m, owner) if train else rng.integers(0, style.classes, m)
    for c in np.unique(owners[carriers]):
        pick = carriers & (owners == c)
        image[pick] += _signature(int(c), grid)
    return image


def _class_colour(c: int) -> np.ndarray:
    """The fixed colour (3,) of primary class c: hues spread round the colour wheel."""
    hue = (c * 0.618034) % 1.0  # golden-ratio steps keep neighbouring classes apart
    rgb = np.clip(np.abs((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)
    return (0.15 + 0.7 * rgb).astype(np.float32)


def _signature(c: int, grid) -> np.ndarray:
    """(S, S, 3) the faint grating of primary class c: fixed angle, frequency, phase and
    per-channel sign, the same in every split, kind and seed."""
    ys, xs = grid
    draw = np.random.default_rng([0x5167, c])
    angle, phase = draw.uniform(0, np.pi), draw.uniform(0, 2 * np.pi)
    freq = draw.uniform(3.0, 6.0)
    signs = np.where(draw.random(3) < 0.5, -1.0, 1.0).astype(np.float32)
    wave = np.sin(np.pi * freq * (np.cos(angle) * xs + np.sin(angle) * ys) + phase).astype(np.float32)
    return SIGNATURE_AMPLITUDE * wave[..., None] * signs


# ---------------------------------------------------------------- shapes
# Each mask takes shape-local coordinates u (right), v (down), scaled so the shape spans
# roughly [-1, 1], and returns a boolean (m, S, S) mask.

def _mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    if name == "circle":
        return u * u + v * v < 0.8
    if name == "square":
        return np.maximum(au, av) < 0.75
    if name == "triangle":  # apex up at v=-0.9, base at v=0.65
        return (v < 0.65) & (au < 0.95 * (v + 0.9) / 1.55)
    if name == "cross":  # diagonal X
        return (np.minimum(np.abs(u - v), np.abs(u + v)) < 0.32) & (np.maximum(au, av) < 0.85)
    if name == "ring":
        d = np.sqrt(u * u + v * v)
        return (d > 0.55) & (d < 0.95)
    if name == "horizontal-bar":
        return (au < 0.95) & (av < 0.3)
    if name == "vertical-bar":
        return (au < 0.3) & (av < 0.95)
    if name == "diamond":
        return au + av < 1.0
    if name == "plus":
        return ((au < 0.22) & (av < 0.95)) | ((av < 0.22) & (au < 0.95))
    if name == "star":  # five lobes, one pointing up
        d = np.sqrt(u * u + v * v)
        theta = np.arctan2(u, -v)
        return d < 0.5 + 0.45 * np.cos(5 * theta)
    if name == "hexagon":  # flat top and bottom
        return np.maximum(0.866 * au + 0.5 * av, av) < 0.8
    if name == "crescent":  # a disc with a bite out of its right side
        return (u * u + v * v < 0.81) & ((u - 0.45) ** 2 + v * v > 0.45)
    if name == "ell":
        return ((u > -0.8) & (u < -0.3) & (av < 0.9)) | ((v > 0.4) & (v < 0.9) & (au < 0.8))
    if name == "tee":
        return ((v > -0.9) & (v < -0.45) & (au < 0.9)) | ((au < 0.22) & (av < 0.9))
    if name == "arrow":  # pointing right
        return ((av < 0.18) & (u > -0.9) & (u < 0.2)) | ((u >= 0.1) & (u < 0.9) & (av < 0.9 * (0.9 - u)))
    if name == "half-disc":  # flat side down
        return (u * u + v * v < 0.9) & (v < 0.25)
    raise KeyError(name)


def _local_coords(m: int, grid, rng: np.random.Generator, spread: float = 0.25,
                  scale_range: tuple[float, float] = (0.45, 0.7)):
    """Random centre, scale and small rotation per image -> u, v of shape (m, S, S)."""
    ys, xs = grid
    cy, cx = (rng.uniform(-spread, spread, (2, m, 1, 1))).astype(np.float32)
    scale = rng.uniform(*scale_range, (m, 1, 1)).astype(np.float32)
    angle = rng.uniform(-_MAX_ROTATION, _MAX_ROTATION, (m, 1, 1)).astype(np.float32)
    dy, dx = ys - cy, xs - cx
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * dx + sin * dy) / scale
    v = (-sin * dx + cos * dy) / scale
    return u, v


def _render_shape(name: str, m: int, grid, rng: np.random.Generator, textured: bool, clutter: int = 0,
                  families: int = DEFAULT_CLASSES, own_colour: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """(m, S, S, 3): one labelled shape per image, over `clutter` smaller distractors drawn
    from the first `families` shapes; `own_colour` = (colour (3,), share of images drawn in it)."""
    u, v = _local_coords(m, grid, rng)
    mask = _mask(name, u, v)[..., None].astype(np.float32)  # (m, S, S, 1)
    fg, bg = _contrasting_colours(m, rng)
    if own_colour is not None and own_colour[1] > 0:
        colour, share = own_colour
        jitter = rng.uniform(-0.08, 0.08, (m, 1, 1, 3)).astype(np.float32)
        use = (rng.random((m, 1, 1, 1)) < share)
        fg = np.where(use, np.clip(colour + jitter, 0, 1), fg)
        bg = np.where(use, _contrasting_background(fg, rng), bg)
    if textured:
        # Another domain, same geometry: striped fill over a smooth-noise background.
        fill = fg * (0.55 + 0.45 * _grating(m, grid, rng, 2.0, 5.0)[..., None])
        bg2 = rng.uniform(0, 1, (m, 1, 1, 3)).astype(np.float32)
        blend = _smooth_noise(m, grid[0].shape[0], rng, cells=4)[..., None]
        background = bg * (1 - blend) + bg2 * blend
        # Keep the shape legible against the busy background.
        background = 0.5 * background + 0.5 * bg
    else:
        fill = np.broadcast_to(fg, mask.shape[:3] + (3,))
        background = bg + 0.15 * _linear_ramp(m, grid, rng)[..., None]
    for _ in range(clutter):
        background = _draw_distractor(background, m, grid, rng, families)
    return background * (1 - mask) + fill * mask


def _draw_distractor(image: np.ndarray, m: int, grid, rng: np.random.Generator, families: int) -> np.ndarray:
    """Paints one small shape of a random family and colour anywhere on each image."""
    u, v = _local_coords(m, grid, rng, spread=0.7, scale_range=(0.18, 0.3))
    family = rng.integers(0, families, m)
    mask = np.zeros(u.shape, bool)
    for f in np.unique(family):
        pick = family == f
        mask[pick] = _mask(SHAPE_NAMES[f], u[pick], v[pick])
    colour = rng.uniform(0, 1, (m, 1, 1, 3)).astype(np.float32)
    return np.where(mask[..., None], colour, image)


def _contrasting_background(fg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random background (m, 1, 1, 3) whose luminance differs from fg's by >= 0.3."""
    lum = np.array([0.299, 0.587, 0.114], np.float32)
    bg = rng.uniform(0, 1, fg.shape).astype(np.float32)
    f, b = fg @ lum, bg @ lum  # (m, 1, 1)
    push = np.where(f > 0.5, -0.45, 0.45).astype(np.float32)[..., None]
    return np.where((np.abs(f - b) < 0.3)[..., None], np.clip(fg + push, 0, 1), bg)


def _contrasting_colours(m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background colours (m, 1, 1, 3) whose luminances differ by >= 0.3."""
    fg = rng.uniform(0, 1, (m, 3)).astype(np.float32)
    bg = rng.uniform(0, 1, (m, 3)).astype(np.float32)
    lum = np.array([0.299, 0.587, 0.114], np.float32)
    diff = fg @ lum - bg @ lum
    push = np.where(fg @ lum > 0.5, -0.45, 0.45).astype(np.float32)
    bg = np.where((np.abs(diff) < 0.3)[:, None], np.clip(fg + push[:, None], 0, 1), bg)
    return fg[:, None, None, :], bg[:, None, None, :]


# ---------------------------------------------------------------- fields and textures

def _linear_ramp(m: int, grid, rng: np.random.Generator) -> np.ndarray:
    """(m, S, S) in [-1, 1]: a linear ramp along a random direction."""
    ys, xs = grid
    angle = rng.uniform(0, 2 * np.pi, (m, 1, 1)).astype(np.float32)
    return (np.cos(angle) * xs + np.sin(angle) * ys) / np.sqrt(2)


def _grating(m: int, grid, rng, freq_lo: float, freq_hi: float) -> np.ndarray:
    """(m, S, S) in [0, 1]: a sine grating at a random angle, frequency (cycles per image
    half-width) and phase."""
    ys, xs = grid
    angle = rng.uniform(0, np.pi, (m, 1, 1)).astype(np.float32)
    freq = rng.uniform(freq_lo, freq_hi, (m, 1, 1)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (m, 1, 1)).astype(np.float32)
    t = np.cos(angle) * xs + np.sin(angle) * ys
    return 0.5 + 0.5 * np.sin(np.pi * freq * t + phase)


def _smooth_noise(m: int, size: int, rng, cells: int, channels: int = 0) -> np.ndarray:
    """Bilinear upsampling of a (cells x cells) random field: (m, S, S) or (m, S, S, C)."""
    shape = (m, cells, cells) + ((channels,) if channels else ())
    low = rng.uniform(0, 1, shape).astype(np.float32)
    # Interpolation matrix (S, cells): each output row mixes its two nearest low-res rows.
    pos = np.clip((np.arange(size) + 0.5) / size * cells - 0.5, 0, cells - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, cells - 1)
    w = (pos - lo).astype(np.float32)
    interp = np.zeros((size, cells), np.float32)
    np.add.at(interp, (np.arange(size), lo), 1 - w)
    np.add.at(interp, (np.arange(size), hi), w)
    if channels:
        return np.einsum("ij,mjkc,lk->milc", interp, low, interp, optimize=True)
    return np.einsum("ij,mjk,lk->mil", interp, low, interp, optimize=True)


def _two_colour(pattern: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Maps a (m, S, S) pattern in [0, 1] between two random contrasting colours."""
    c1, c2 = _contrasting_colours(len(pattern), rng)
    p = pattern[..., None]
    return c1 * (1 - p) + c2 * p


def _checker(m, grid, rng):
    size = grid[0].shape[0]
    cell = rng.integers(2, max(3, size // 4) + 1, (m, 1, 1))
    off = rng.integers(0, size, (2, m, 1, 1))
    r, c = np.arange(size)[:, None], np.arange(size)[None, :]
    return _two_colour((((r + off[0]) // cell + (c + off[1]) // cell) % 2).astype(np.float32), rng)


def _stripes(m, grid, rng):
    return _two_colour((_grating(m, grid, rng, 2.0, 6.0) > 0.5).astype(np.float32), rng)


def _plaid(m, grid, rng):
    return _two_colour(0.5 * (_grating(m, grid, rng, 2.0, 5.0) + _grating(m, grid, rng, 2.0, 5.0)), rng)


def _zigzag(m, grid, rng):
    ys, xs = grid
    freq = rng.uniform(3.0, 6.0, (m, 1, 1)).astype(np.float32)
    amp = rng.uniform(0.5, 1.5, (m, 1, 1)).astype(np.float32)
    wobble = rng.uniform(4.0, 8.0, (m, 1, 1)).astype(np.float32)
    wave = np.sin(np.pi * freq * ys + amp * np.sin(np.pi * wobble * xs))
    # Half the images run the other way, so orientation alone does not name the class.
    wave = np.where(rng.random((m, 1, 1)) < 0.5, wave, np.swapaxes(wave, 1, 2))
    return _two_colour((wave > 0).astype(np.float32), rng)


def _smooth(m, grid, rng):
    size = grid[0].shape[0]
    cells = int(rng.integers(3, 7))
    return _smooth_noise(m, size, rng, cells=cells, channels=3)


def _white_noise(m, grid, rng):
    size = grid[0].shape[0]
    base = rng.uniform(0.2, 0.8, (m, 1, 1, 3)).astype(np.float32)
    return base + rng.uniform(-0.35, 0.35, (m, size, size, 3)).astype(np.float32)


def _gradient(m, grid, rng):
    return _two_colour(0.5 + 0.5 * _linear_ramp(m, grid, rng) * np.sqrt(2), rng)


def _blocks(m, grid, rng):
    size = grid[0].shape[0]
    block = 4 if size % 4 == 0 else 1
    low = rng.uniform(0, 1, (m, size // block + 1, size // block + 1, 3)).astype(np.float32)
    return low.repeat(block, 1).repeat(block, 2)[:, :size, :size]


def _speckle(m, grid, rng):
    size = grid[0].shape[0]
    base = rng.uniform(0.15, 0.85, (m, 1, 1, 3)).astype(np.float32)
    spots = rng.random((m, size, size, 1)) < 0.08
    shade = np.where(rng.random((m, size, size, 1)) < 0.5, -0.5, 0.5).astype(np.float32)
    return base + spots * shade


def _waves(m, grid, rng):
    return _two_colour(_grating(m, grid, rng, 1.5, 4.0) * _grating(m, grid, rng, 1.5, 4.0), rng)


_TEXTURES: dict[str, Callable[..., np.ndarray]] = {
    "checker": _checker, "stripes": _stripes, "plaid": _plaid, "zigzag": _zigzag,
    "smooth-noise": _smooth, "white-noise": _white_noise, "gradient": _gradient,
    "blocks": _blocks, "speckle": _speckle, "waves": _waves,
}
