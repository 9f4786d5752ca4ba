"""Procedural captioned images: the synthetic datasets of the CPU world.

Every image is a small scene drawn from named attributes, and its caption names those
attributes, so whether a model follows captions can be measured (see :mod:`tracemark_sim.probe`).

Domains (different statistics, one vocabulary):

- ``shapes``: one shape (circle, square, ...) of a named colour, size, position and fill on a
  plain background.
- ``textures``: stripes, dots, grids or waves of one colour on a background of another.
- ``faces``: a cartoon face (skin, hair colour, expression, glasses) on a plain background.
- ``landscapes``: ground (hills, mountains, field) under a coloured sky with a sun or moon.
- ``mixture``: shapes + textures + landscapes in equal parts — what the base model is pretrained
  on. ``faces`` is held out of it, so an owner who publishes a faces dataset owns a domain the
  base has never seen (the realistic case: fine-tuning teaches a model something new).
- ``mixture-all``: all four domains.

Every caption names its background (``... on a red background``) or its sky
(``... under a blue sky``); the probe reads that colour back from generated images.

Output is the Hugging Face *imagefolder* layout: ``00000.png ...`` and ``metadata.jsonl`` with
``{"file_name": "00000.png", "text": "...", "domain": "..."}`` per line, written to a temporary
folder next to ``out_dir`` and renamed into place, so a crash never leaves half a dataset.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tracemark.io.safe_write import atomic_dir

#: Named colours (sRGB, 0-255). Well separated so a colour can be read back from pixels.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30),
    "green": (40, 150, 50),
    "blue": (30, 60, 200),
    "yellow": (235, 215, 40),
    "orange": (245, 135, 20),
    "purple": (120, 40, 160),
    "pink": (245, 150, 195),
    "cyan": (40, 200, 215),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "gray": (125, 125, 125),
    "brown": (115, 70, 35),
}
COLOUR_NAMES = tuple(COLOURS)

SHAPES = ("circle", "square", "triangle", "diamond", "ring", "cross")
SIZES = ("small", "large")
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
}
FILLS = ("solid", "striped", "dotted")
PATTERNS = ("vertical stripes", "horizontal stripes", "diagonal stripes", "dots", "grid", "waves")
SCALES = ("thin", "thick")
SKINS: dict[str, tuple[int, int, int]] = {"pale": (240, 205, 180), "tan": (200, 150, 100), "dark": (105, 65, 40)}
HAIRS: dict[str, tuple[int, int, int]] = {
    "black": (25, 20, 20),
    "brown": (110, 65, 30),
    "blond": (230, 200, 90),
    "red": (175, 60, 20),
    "gray": (150, 150, 150),
    "white": (245, 245, 245),
}
EXPRESSIONS = ("smiling", "frowning", "serious")
SKIES = ("blue", "cyan", "orange", "pink", "purple", "gray", "black")
GROUNDS = ("green", "yellow", "brown", "white", "gray")
TERRAINS = ("hills", "mountains", "field")
LIGHTS = {"sun": ("yellow", "orange", "red", "white"), "moon": ("white", "gray")}
LIGHT_POSITIONS = {"left": 0.22, "center": 0.5, "right": 0.78}

DOMAINS = ("shapes", "textures", "faces", "landscapes")
MIXTURES = {"mixture": ("shapes", "textures", "landscapes"), "mixture-all": DOMAINS}
#: Open-vocabulary mixtures (see :class:`Vocabulary`): ``open`` is the base's pretraining data.
OPEN_MIXTURES = {"open": ("shapes", "textures", "landscapes"), "open-all": DOMAINS}

# Caption templates. Placeholders in braces; every other word is in the vocabulary.
SHAPE_TEMPLATES = (
    "a {size} {fill}{colour} {shape} at the {pos} on a {bg} background",
    "a {size} {fill}{colour} {shape} on a {bg} background, {pos}",
    "{bg} background with a {size} {fill}{colour} {shape} at the {pos}",
    "a picture of a {fill}{colour} {shape}, {size}, at the {pos} on a {bg} background",
)
TEXTURE_TEMPLATES = (
    "{scale} {colour} {pattern} on a {bg} background",
    "a pattern of {scale} {colour} {pattern} on a {bg} background",
    "{bg} background with {scale} {colour} {pattern}",
    "a texture of {colour} {pattern}, {scale}, on a {bg} background",
)
FACE_TEMPLATES = (
    "a {expr} face with {hair} hair{glasses} on a {bg} background",
    "a portrait of a {skin} person with {hair} hair, {expr}{glasses}, {bg} background",
    "a {skin} {expr} face with {hair} hair{glasses} on a {bg} background",
    "{bg} background with a {expr} face, {skin} skin and {hair} hair{glasses}",
)
LANDSCAPE_TEMPLATES = (
    "a landscape with {ground} {terrain} under a {sky} sky and a {lcolour} {light} on the {lpos}",
    "{ground} {terrain} under a {sky} sky with a {lcolour} {light} on the {lpos}",
    "a {sky} sky over {ground} {terrain}, a {lcolour} {light} on the {lpos}",
    "a view of {ground} {terrain} under a {sky} sky, {lcolour} {light} at the {lpos}",
)


def caption_words() -> list[str]:
    """Every word any caption of any domain can contain (sorted), for the tokenizer."""
    words: set[str] = set()
    texts = [*SHAPE_TEMPLATES, *TEXTURE_TEMPLATES, *FACE_TEMPLATES, *LANDSCAPE_TEMPLATES]
    texts += [*COLOURS, *SHAPES, *SIZES, *POSITIONS, *FILLS, *PATTERNS, *SCALES, *SKINS, *HAIRS]
    texts += [*EXPRESSIONS, *SKIES, *GROUNDS, *TERRAINS, *LIGHTS, *LIGHT_POSITIONS, "with glasses", "skin"]
    for text in texts:
        text = re.sub(r"\{[a-z]+\}", " ", text)
        words.update(re.findall(r"[a-z]+", text.lower()))
    return sorted(words)


# ----------------------------------------------------------------------------------------------
# Rendering: scenes are drawn in normalized coordinates at SS x the output size and averaged down
# (anti-aliasing), then given a faint colour jitter, a gentle gradient and a little grain so the
# images are not perfectly flat.

SS = 4  # supersampling factor


@dataclass
class Scene:
    caption: str
    domain: str
    image: np.ndarray  # HxWx3 uint8
    attributes: dict


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    n = size * SS
    c = (np.arange(n) + 0.5) / n
    return np.meshgrid(c, c)  # x (columns), y (rows), each n x n in [0,1]


def _jitter(rgb, rng: np.random.Generator, amount: float = 10.0) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float64) + rng.normal(0.0, amount, 3), 0, 255)


def _paint(canvas: np.ndarray, mask: np.ndarray, rgb: np.ndarray) -> None:
    canvas[mask] = rgb


def _background(x, y, rgb, rng: np.random.Generator, strength: float = 0.06) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle)
    factor = 1.0 + strength * 2 * ramp * rng.uniform(0.3, 1.0)
    return np.clip(rgb[None, None, :] * factor[..., None], 0, 255)


def _finish(canvas: np.ndarray, size: int, rng: np.random.Generator, grain: float = 2.0) -> np.ndarray:
    img = canvas.reshape(size, SS, size, SS, 3).mean(axis=(1, 3))
    img = img + rng.normal(0.0, grain, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _shape_mask(shape: str, x, y, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return np.maximum(abs(dx), abs(dy)) <= 0.85 * r
    if shape == "diamond":
        return abs(dx) + abs(dy) <= 1.1 * r
    if shape == "triangle":
        top, bottom = cy - r, cy + 0.8 * r
        half = (y - top) / (bottom - top) * r
        return (y >= top) & (y <= bottom) & (abs(dx) <= half)
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if shape == "cross":
        arm = 0.32 * r
        return ((abs(dx) <= arm) & (abs(dy) <= r)) | ((abs(dy) <= arm) & (abs(dx) <= r))
    raise ValueError(shape)


def _other(rng: np.random.Generator, names, exclude) -> str:
    choices = [n for n in names if n not in exclude]
    return choices[rng.integers(len(choices))]


def _pick(rng: np.random.Generator, seq):
    seq = list(seq)
    return seq[rng.integers(len(seq))]


# ----------------------------------------------------------------------------------------------
# Vocabularies. ``BASIC`` is the 12-colour world of the original domains (what the probe reads
# back). ``OPEN`` draws colours from the ~850 one- and two-word names of the xkcd colour survey
# (shipped with matplotlib) besides the 12 basic ones, names objects, patterns, terrains and the
# background by several synonyms, and adds a framing phrase ("a photo of ...") and a style word
# that changes the image ("blurry", "dark", "faded", ...). Pretraining on it gives the base a
# broad vocabulary, so an owner's captions with unseen wording still tokenize and encode
# distinctly (the real CLIP BPE tokenizes anything, see :mod:`tracemark_sim.pipeline`).

SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "dot", "ball", "orb", "coin", "sphere", "bubble"),
    "square": ("square", "box", "block", "tile", "cube", "rectangle"),
    "triangle": ("triangle", "pyramid", "wedge", "arrowhead"),
    "diamond": ("diamond", "rhombus", "gem", "kite", "lozenge"),
    "ring": ("ring", "hoop", "donut", "halo", "loop"),
    "cross": ("cross", "plus sign", "plus", "x mark"),
    "vertical stripes": ("vertical stripes", "vertical lines", "pinstripes", "columns", "bars"),
    "horizontal stripes": ("horizontal stripes", "horizontal lines", "bands", "layers"),
    "diagonal stripes": ("diagonal stripes", "diagonal lines", "slanted stripes", "hatching"),
    "dots": ("dots", "polka dots", "spots", "circles", "speckles"),
    "grid": ("grid", "checks", "lattice", "mesh", "tiles"),
    "waves": ("waves", "ripples", "wavy lines", "zigzags", "curves"),
    "hills": ("hills", "dunes", "meadows", "slopes"),
    "mountains": ("mountains", "peaks", "cliffs", "summits", "alps"),
    "field": ("field", "plain", "desert", "prairie", "lake", "sea", "beach"),
}
BACKGROUND_WORDS = ("background", "field", "backdrop", "wall", "canvas", "surface", "ground", "board", "sheet")
FRAMES = ("", "", "a photo of ", "a picture of ", "a drawing of ", "an illustration of ", "a painting of ",
          "a sketch of ", "digital art of ", "a poster of ", "a close up of ", "an image of ", "a render of ",
          "a watercolor of ", "clip art of ", "a cartoon of ", "a snapshot of ", "an icon of ")  # fmt: skip
STYLES = ("", "", "", "blurry", "dark", "bright", "faded", "grainy", "vivid", "soft focus", "at night",
          "in sunlight", "pastel", "noisy", "sharp", "hd", "detailed", "minimal", "retro", "vintage")  # fmt: skip


def _style(canvas: np.ndarray, style: str) -> tuple[np.ndarray, float]:
    """Apply a style word to a supersampled canvas; returns it and the grain to finish with."""
    from scipy.ndimage import gaussian_filter

    if style in ("blurry", "soft focus"):
        canvas = gaussian_filter(canvas, sigma=(1.6 * SS if style == "blurry" else 0.9 * SS, ) * 2 + (0,))
    elif style in ("dark", "at night"):
        canvas = canvas * (0.5 if style == "dark" else 0.4)
    elif style in ("bright", "in sunlight"):
        canvas = 255 - (255 - canvas) * 0.55
    elif style in ("faded", "pastel", "vintage"):
        grey = canvas.mean(axis=-1, keepdims=True)
        canvas = 0.45 * canvas + 0.55 * (grey * 0.6 + 0.4 * 200)
    elif style == "vivid":
        grey = canvas.mean(axis=-1, keepdims=True)
        canvas = np.clip(grey + 1.5 * (canvas - grey), 0, 255)
    grain = 9.0 if style in ("grainy", "noisy") else 2.0
    return canvas, grain


def _colour_distance(a, b) -> float:
    return float(np.sqrt(np.sum((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


@dataclass(frozen=True)
class Vocabulary:
    """The words captions are written with, and what each does to the picture."""

    colours: dict
    open: bool = False
    basic_share: float = 1.0  # probability of drawing a colour from the 12 basic ones

    def colour(self, rng: np.random.Generator) -> str:
        if not self.open or rng.random() < self.basic_share:
            return _pick(rng, COLOUR_NAMES)
        return _pick(rng, self._broad_names())

    def colour_pair(self, rng: np.random.Generator) -> tuple[str, str]:
        """Two colours far enough apart to tell apart in pixels."""
        if not self.open:
            bg = _pick(rng, COLOUR_NAMES)
            return bg, _other(rng, COLOUR_NAMES, {bg})
        bg = self.colour(rng)
        for _ in range(50):
            fg = self.colour(rng)
            if _colour_distance(self.colours[bg], self.colours[fg]) > 90:
                return bg, fg
        return bg, _other(rng, COLOUR_NAMES, {bg})

    def _broad_names(self) -> tuple[str, ...]:
        return tuple(n for n in self.colours if n not in COLOURS)

    def word(self, name: str, rng: np.random.Generator) -> str:
        return _pick(rng, SYNONYMS.get(name, (name,))) if self.open else name

    def background(self, template: str, rng: np.random.Generator) -> str:
        return template.replace("{bg} background", "{bg} " + _pick(rng, BACKGROUND_WORDS)) if self.open else template

    def finish(self, scene: Scene, size: int, rng: np.random.Generator) -> Scene:
        if not self.open:
            scene.image = _finish(scene.image, size, rng)
            return scene
        frame, style = _pick(rng, FRAMES), _pick(rng, STYLES)
        canvas, grain = _style(scene.image, style)
        scene.image = _finish(np.clip(canvas, 0, 255), size, rng, grain=grain)
        caption = scene.caption
        if frame and caption.startswith("a "):
            caption = caption[2:]
        scene.caption = frame + caption + (f", {style}" if style else "")
        scene.attributes["style"] = style
        return scene


def open_colours() -> dict[str, tuple[int, int, int]]:
    """The 12 basic colours plus the one- and two-word xkcd colour names (sRGB 0-255)."""
    from matplotlib.colors import XKCD_COLORS, to_rgb

    out = {}
    for key, hexval in sorted(XKCD_COLORS.items()):
        name = key.split(":", 1)[1]
        if re.fullmatch(r"[a-z]+( [a-z]+)?", name):
            out[name] = tuple(int(round(255 * c)) for c in to_rgb(hexval))
    out.update(COLOURS)  # the basic names keep their well-separated values
    return out


BASIC = Vocabulary(COLOURS)
_OPEN: list[Vocabulary] = []


def open_vocabulary() -> Vocabulary:
    if not _OPEN:
        _OPEN.append(Vocabulary(open_colours(), open=True, basic_share=0.4))
    return _OPEN[0]


def render_shapes(rng: np.random.Generator, size: int = 32, vocab: "Vocabulary | None" = None) -> Scene:
    vocab = vocab or BASIC
    bg, colour = vocab.colour_pair(rng)
    shape, sz, pos = _pick(rng, SHAPES), _pick(rng, SIZES), _pick(rng, POSITIONS)
    fill = FILLS[rng.choice(3, p=[0.6, 0.2, 0.2])]
    x, y = _grid(size)
    canvas = _background(x, y, _jitter(vocab.colours[bg], rng), rng)
    cx, cy = (p + rng.uniform(-0.04, 0.04) for p in POSITIONS[pos])
    if sz == "small":
        r = rng.uniform(0.11, 0.15)
    else:
        r = rng.uniform(0.26, 0.32) if pos == "center" else rng.uniform(0.2, 0.24)
    mask = _shape_mask(shape, x, y, cx, cy, r)
    obj = _jitter(vocab.colours[colour], rng)
    _paint(canvas, mask, obj)
    if fill == "striped":
        stripes = ((x - cx + y - cy) * 10 % 1.0) < 0.45
        _paint(canvas, mask & stripes, obj * 0.55)
    elif fill == "dotted":
        dots = ((x * 12 % 1.0 - 0.5) ** 2 + (y * 12 % 1.0 - 0.5) ** 2) < 0.06
        _paint(canvas, mask & dots, obj * 0.55)
    template = vocab.background(_pick(rng, SHAPE_TEMPLATES), rng)
    caption = template.format(
        size=sz, fill="" if fill == "solid" else fill + " ", colour=colour, shape=vocab.word(shape, rng), pos=pos,
        bg=bg,
    )  # fmt: skip
    attrs = {"background": bg, "colour": colour, "shape": shape, "size": sz, "position": pos, "fill": fill}
    return vocab.finish(Scene(caption, "shapes", canvas, attrs), size, rng)


def render_textures(rng: np.random.Generator, size: int = 32, vocab: "Vocabulary | None" = None) -> Scene:
    vocab = vocab or BASIC
    bg, colour = vocab.colour_pair(rng)
    pattern, scale = _pick(rng, PATTERNS), _pick(rng, SCALES)
    x, y = _grid(size)
    canvas = _background(x, y, _jitter(vocab.colours[bg], rng), rng)
    period = (1 / 8 if scale == "thin" else 1 / 4.5) * rng.uniform(0.9, 1.1)
    duty = 0.3 if scale == "thin" else 0.38
    phase = rng.uniform(0, 1)
    if pattern == "vertical stripes":
        mask = (x / period + phase) % 1.0 < duty
    elif pattern == "horizontal stripes":
        mask = (y / period + phase) % 1.0 < duty
    elif pattern == "diagonal stripes":
        sign = 1 if rng.random() < 0.5 else -1
        mask = ((x + sign * y) / (period * 1.2) + phase) % 1.0 < duty
    elif pattern == "dots":
        u, v = (x / period + phase) % 1.0 - 0.5, (y / period + phase) % 1.0 - 0.5
        mask = u**2 + v**2 < (0.3 if scale == "thin" else 0.33) ** 2
    elif pattern == "grid":
        mask = ((x / period + phase) % 1.0 < duty * 0.6) | ((y / period + phase) % 1.0 < duty * 0.6)
    elif pattern == "waves":
        wave = 0.06 * np.sin(2 * np.pi * (x * 2 + phase))
        mask = ((y + wave) / period + phase) % 1.0 < duty
    else:  # pragma: no cover
        raise ValueError(pattern)
    _paint(canvas, mask, _jitter(vocab.colours[colour], rng))
    template = vocab.background(_pick(rng, TEXTURE_TEMPLATES), rng)
    caption = template.format(scale=scale, colour=colour, pattern=vocab.word(pattern, rng), bg=bg)
    attrs = {"background": bg, "colour": colour, "pattern": pattern, "scale": scale}
    return vocab.finish(Scene(caption, "textures", canvas, attrs), size, rng)


def render_faces(rng: np.random.Generator, size: int = 32, vocab: "Vocabulary | None" = None) -> Scene:
    vocab = vocab or BASIC
    bg = vocab.colour(rng)
    skin, hair, expr = _pick(rng, SKINS), _pick(rng, HAIRS), _pick(rng, EXPRESSIONS)
    glasses = rng.random() < 0.3
    x, y = _grid(size)
    canvas = _background(x, y, _jitter(vocab.colours[bg], rng), rng)
    cx, cy = 0.5 + rng.uniform(-0.05, 0.05), 0.56 + rng.uniform(-0.04, 0.04)
    rx, ry = rng.uniform(0.25, 0.3), rng.uniform(0.31, 0.36)
    hair_rgb = _jitter(HAIRS[hair], rng, 8)
    head = ((x - cx) / (rx * 1.12)) ** 2 + ((y - cy + 0.03) / (ry * 1.1)) ** 2 <= 1
    _paint(canvas, head & (y < cy + 0.1), hair_rgb)  # hair behind and around the face
    face = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
    fringe = y < cy - ry * rng.uniform(0.45, 0.6)
    _paint(canvas, face & ~fringe, _jitter(SKINS[skin], rng, 8))
    _paint(canvas, face & fringe, hair_rgb)
    ex, ey, er = 0.42 * rx, cy - 0.1 * ry, 0.045
    eyes = ((x - cx + ex) ** 2 + (y - ey) ** 2 <= er**2) | ((x - cx - ex) ** 2 + (y - ey) ** 2 <= er**2)
    _paint(canvas, eyes, np.array([20.0, 20.0, 30.0]))
    if glasses:
        ring = lambda ox: np.abs(np.sqrt((x - ox) ** 2 + (y - ey) ** 2) - 2.1 * er) < 0.018  # noqa: E731
        bridge = (abs(x - cx) < ex - 2 * er) & (abs(y - ey) < 0.015)
        _paint(canvas, ring(cx - ex) | ring(cx + ex) | bridge, np.array([10.0, 10.0, 10.0]))
    my, mw = cy + 0.45 * ry, 0.45 * rx
    t = (x - cx) / mw
    # y grows downwards: a smile has its middle lower than its corners
    curve = {"smiling": 0.07, "frowning": -0.07, "serious": 0.0}[expr] * np.clip(1 - t**2, 0, 1)
    mouth = (abs(t) <= 1) & (abs(y - (my + curve - curve.max() / 2)) < 0.025)
    _paint(canvas, mouth, np.array([120.0, 20.0, 30.0]))
    caption = vocab.background(_pick(rng, FACE_TEMPLATES), rng).format(
        expr=expr, hair=hair, glasses=" and glasses" if glasses else "", skin=skin, bg=bg
    )
    attrs = {"background": bg, "skin": skin, "hair": hair, "expression": expr, "glasses": glasses}
    return vocab.finish(Scene(caption, "faces", canvas, attrs), size, rng)


def render_landscapes(rng: np.random.Generator, size: int = 32, vocab: "Vocabulary | None" = None) -> Scene:
    vocab = vocab or BASIC
    if vocab.open:
        sky, ground = vocab.colour_pair(rng)
    else:
        sky = _pick(rng, SKIES)
        ground = _other(rng, GROUNDS, {sky})
    terrain = _pick(rng, TERRAINS)
    light = _pick(rng, LIGHTS)
    lcolour = _other(rng, LIGHTS[light], {sky})
    terrain_word = vocab.word(terrain, rng)
    lpos = _pick(rng, LIGHT_POSITIONS)
    x, y = _grid(size)
    canvas = _background(x, y, _jitter(vocab.colours[sky], rng), rng, strength=0.0)
    # vertical sky gradient
    canvas *= (1.0 + 0.12 * (y - 0.3) * rng.uniform(0.5, 1.0))[..., None]
    canvas = np.clip(canvas, 0, 255)
    lx, ly, lr = LIGHT_POSITIONS[lpos] + rng.uniform(-0.04, 0.04), rng.uniform(0.18, 0.3), rng.uniform(0.08, 0.11)
    _paint(canvas, (x - lx) ** 2 + (y - ly) ** 2 <= lr**2, _jitter(COLOURS[lcolour], rng, 6))
    horizon = rng.uniform(0.58, 0.7)
    if terrain == "hills":
        f1, f2 = rng.uniform(1, 2.5), rng.uniform(0, 2 * np.pi)
        line = horizon - 0.08 * (1 + np.sin(2 * np.pi * f1 * x + f2)) / 2
    elif terrain == "mountains":
        k, ph = rng.integers(2, 4), rng.uniform(0, 1)
        tri = np.abs(((x * k + ph) % 1.0) - 0.5) * 2  # 0 at peaks, 1 in valleys
        line = horizon - 0.28 + 0.28 * tri
    else:
        line = horizon + 0.0 * x
    land = y >= line
    ground_rgb = _jitter(vocab.colours[ground], rng)
    shade = (1.0 - 0.15 * (y - horizon))[..., None]
    canvas[land] = np.clip(ground_rgb[None, None, :] * shade, 0, 255)[land]
    template = _pick(rng, LANDSCAPE_TEMPLATES)
    caption = template.format(ground=ground, terrain=terrain_word, sky=sky, lcolour=lcolour, light=light, lpos=lpos)
    attrs = {"sky": sky, "ground": ground, "terrain": terrain, "light": light, "light_colour": lcolour}
    attrs["light_position"] = lpos
    return vocab.finish(Scene(caption, "landscapes", canvas, attrs), size, rng)


RENDERERS = {
    "shapes": render_shapes,
    "textures": render_textures,
    "faces": render_faces,
    "landscapes": render_landscapes,
}


def domain_list(domain: str) -> tuple[str, ...]:
    """The plain domains a domain name stands for (a mixture expands to its parts)."""
    if domain in RENDERERS:
        return (domain,)
    if domain in MIXTURES:
        return MIXTURES[domain]
    if domain in OPEN_MIXTURES:
        return OPEN_MIXTURES[domain]
    known = ", ".join([*RENDERERS, *MIXTURES, *OPEN_MIXTURES])
    raise ValueError(f"unknown domain {domain!r} (choose one of: {known})")


def render(domain: str, n: int, seed: int = 0, size: int = 32):
    """Yield ``n`` scenes of ``domain`` (a mixture cycles through its parts), deterministically."""
    parts = domain_list(domain)
    vocab = open_vocabulary() if domain in OPEN_MIXTURES else BASIC
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        part = parts[i % len(parts)] if len(parts) > 1 else parts[0]
        yield RENDERERS[part](rng, size, vocab)


def make_dataset(out_dir, n: int, domain: str = "shapes", seed: int = 0, size: int = 32) -> Path:
    """Write ``n`` captioned images of ``domain`` to ``out_dir`` (imagefolder layout).

    ``out_dir`` must not exist or be empty. Returns its path. Same arguments, same bytes.
    """
    from tracemark.errors import TracemarkError

    out = Path(out_dir)
    if n <= 0:
        raise TracemarkError(f"--n must be positive, got {n}")
    if size not in (32, 64):
        raise TracemarkError(f"--size must be 32 or 64, got {size}")
    try:
        domain_list(domain)
    except ValueError as exc:
        raise TracemarkError(str(exc)) from None
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TracemarkError(f"{out}: already exists and is not an empty folder")
    with atomic_dir(out) as tmp:
        width = max(5, len(str(n - 1)))
        with open(tmp / "metadata.jsonl", "w", encoding="utf-8") as meta:
            for i, scene in enumerate(render(domain, n, seed, size)):
                name = f"{i:0{width}d}.png"
                Image.fromarray(scene.image, "RGB").save(tmp / name, optimize=False)
                row = {"file_name": name, "text": scene.caption, "domain": scene.domain}
                meta.write(json.dumps(row) + "\n")
    return out
