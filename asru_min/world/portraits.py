"""Portraits of the synthetic world: appearance features, their drawing with pillow, their plain description,
and the transformed views of the test split. Everything is a pure function of its inputs (and of a seeded rng),
so the same seed gives the same bytes."""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw, ImageEnhance, ImageOps

IMAGE_SIZE = 128
MIN_LOOK_DISTANCE = 3  # any two people differ in at least this many LOOK_FEATURES


SKINS = {"pale": (248, 222, 200), "light": (236, 196, 160), "tan": (204, 152, 110), "brown": (150, 100, 66),
         "dark": (96, 62, 42)}
HAIR_COLOURS = {"black": (25, 22, 22), "brown": (110, 64, 30), "blond": (240, 206, 96), "red": (190, 50, 30),
                "grey": (150, 150, 155), "pink": (240, 120, 190)}
HAIR_STYLES = ["short", "long", "curly", "bun"]
FACES = {"round": (50, 50), "oval": (44, 56), "square": (48, 50), "long": (38, 58)}  # (width, height)
EYES = {"brown": (90, 55, 25), "blue": (40, 110, 220), "green": (40, 150, 70), "grey": (120, 130, 140)}
GLASSES = ["none", "round", "square"]
HATS = {"none": None, "cap": (200, 30, 40), "beanie": (30, 50, 140), "top hat": (20, 20, 20),
        "beret": (120, 30, 90)}
SHIRTS = {"red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 210), "yellow": (240, 210, 40),
          "purple": (130, 50, 170), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (30, 30, 30)}
BACKGROUNDS = {"blue": (120, 170, 240), "green": (130, 210, 140), "yellow": (250, 230, 130),
               "purple": (190, 150, 230), "orange": (250, 180, 110), "pink": (250, 180, 210),
               "grey": (190, 190, 190), "teal": (90, 190, 190)}
PATTERNS = ["plain", "striped", "dotted", "checked"]
LOOK_FEATURES = ("face", "skin", "hair_colour", "hair_style", "glasses", "hat", "shirt", "background", "pattern")


def article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def describe(look: dict[str, str]) -> str:
    """Plain description of the large features of a portrait (what the image alone shows)."""
    colour, style = look["hair_colour"], look["hair_style"]
    hair = f"{colour} hair in a bun" if style == "bun" else f"{style} {colour} hair"
    extras = []
    if look["glasses"] != "none":
        extras.append(f"{look['glasses']} glasses")
    if look["hat"] != "none":
        extras.append(f"a {look['hat']}")
    worn = hair + "".join(", " + e for e in extras[:-1]) + (f" and {extras[-1]}" if extras else "")
    bg = look["background"]
    background = f"a plain {bg} background" if look["pattern"] == "plain" else \
        f"{article(bg)} {bg} {look['pattern']} background"
    shirt = look["shirt"]
    return f"a person with {worn}, wearing {article(shirt)} {shirt} shirt, in front of {background}"


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(max(0, min(255, int(c * f))) for c in rgb)


def draw_portrait(look: dict[str, str]) -> Image.Image:
    """Draw a 128x128 RGB portrait. Pure function of `look` (no randomness), so bytes are reproducible."""
    S = IMAGE_SIZE
    bg = BACKGROUNDS[look["background"]]
    img = Image.new("RGB", (S, S), bg)
    d = ImageDraw.Draw(img)
    dark = _shade(bg, 0.72)
    if look["pattern"] == "striped":
        for x in range(0, S, 16):
            d.rectangle([x, 0, x + 7, S], fill=dark)
    elif look["pattern"] == "dotted":
        for y in range(8, S, 16):
            for x in range(8, S, 16):
                d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=dark)
    elif look["pattern"] == "checked":
        for y in range(0, S, 16):
            for x in range(0, S, 16):
                if (x // 16 + y // 16) % 2 == 0:
                    d.rectangle([x, y, x + 15, y + 15], fill=dark)

    skin, hair = SKINS[look["skin"]], HAIR_COLOURS[look["hair_colour"]]
    fw, fh = FACES[look["face"]]
    cx, cy = 64, 60
    left, right, top, bottom = cx - fw // 2, cx + fw // 2, cy - fh // 2, cy + fh // 2

    # shirt and neck
    d.polygon([(14, S), (22, 104), (48, 94), (80, 94), (106, 104), (114, S)], fill=SHIRTS[look["shirt"]],
              outline=_shade(SHIRTS[look["shirt"]], 0.6))
    d.rectangle([cx - 8, bottom - 6, cx + 8, 98], fill=_shade(skin, 0.92))
    # hair behind the face (long / curly)
    if look["hair_style"] == "long":
        d.rounded_rectangle([left - 8, top - 8, right + 8, 104], radius=16, fill=hair)
    elif look["hair_style"] == "curly":
        for ang in range(150, 391, 20):
            a = math.radians(ang)
            x, y = cx + (fw / 2 + 2) * math.cos(a), cy - 4 - (fh / 2 + 2) * abs(math.sin(a)) * (1 if ang < 360 else 0.3)
            d.ellipse([x - 9, y - 9, x + 9, y + 9], fill=hair)
    # face
    if look["face"] == "square":
        d.rounded_rectangle([left, top, right, bottom], radius=10, fill=skin)
    else:
        d.ellipse([left, top, right, bottom], fill=skin)
    # ears and earrings
    d.ellipse([left - 4, cy - 4, left + 4, cy + 8], fill=skin)
    d.ellipse([right - 4, cy - 4, right + 4, cy + 8], fill=skin)
    if look["earrings"] == "yes":
        for ex in (left - 1, right + 1):
            d.ellipse([ex - 3, cy + 8, ex + 3, cy + 14], outline=(230, 190, 40), width=2)
    # hair on top
    if look["hair_style"] in ("short", "bun", "long"):
        d.chord([left - 3, top - 6, right + 3, cy + 6], start=180, end=360, fill=hair)
    if look["hair_style"] == "curly":
        d.chord([left - 2, top - 8, right + 2, cy], start=180, end=360, fill=hair)
    if look["hair_style"] == "bun":
        d.ellipse([cx - 11, top - 20, cx + 11, top + 2], fill=hair)
    # eyes, nose, mouth
    for ex in (cx - 10, cx + 10):
        d.ellipse([ex - 6, cy + 2, ex + 6, cy + 10], fill=(255, 255, 255))
        d.ellipse([ex - 3, cy + 3, ex + 3, cy + 9], fill=EYES[look["eyes"]])
    d.line([cx, cy + 10, cx - 2, cy + 18], fill=_shade(skin, 0.7), width=2)
    d.arc([cx - 9, cy + 14, cx + 9, cy + 26], start=20, end=160, fill=(150, 40, 50), width=2)
    # glasses
    if look["glasses"] == "round":
        for ex in (cx - 10, cx + 10):
            d.ellipse([ex - 8, cy - 2, ex + 8, cy + 14], outline=(15, 15, 15), width=3)
        d.line([cx - 2, cy + 5, cx + 2, cy + 5], fill=(15, 15, 15), width=3)
    elif look["glasses"] == "square":
        for ex in (cx - 10, cx + 10):
            d.rectangle([ex - 8, cy, ex + 8, cy + 12], outline=(15, 15, 15), width=3)
        d.line([cx - 2, cy + 5, cx + 2, cy + 5], fill=(15, 15, 15), width=3)
    # hat
    hat = HATS[look["hat"]]
    if look["hat"] == "cap":
        d.chord([left - 2, top - 10, right + 2, top + 22], start=180, end=360, fill=hat)
        d.rectangle([cx, top + 4, right + 16, top + 8], fill=_shade(hat, 0.7))
    elif look["hat"] == "beanie":
        d.rounded_rectangle([left - 2, top - 14, right + 2, top + 8], radius=10, fill=hat)
        d.ellipse([cx - 5, top - 22, cx + 5, top - 12], fill=(240, 240, 240))
    elif look["hat"] == "top hat":
        d.rectangle([cx - 18, top - 30, cx + 18, top + 2], fill=hat)
        d.rectangle([left - 10, top, right + 10, top + 6], fill=hat)
    elif look["hat"] == "beret":
        d.ellipse([left - 8, top - 12, right + 4, top + 8], fill=hat)
    return img


# Views: the same portrait seen differently. A view is one choice of each of four discrete transformations; the
# held-out views (the test splits) are the combinations with (mirror + rotation + crop + tone) % 5 == 0, so every
# single transformation occurs in training but those combinations never do.
VIEW_MIRRORS = (False, True)
VIEW_ROTATIONS = (-12.0, -6.0, 0.0, 6.0, 12.0)           # degrees
VIEW_CROPS = ((0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))  # window position in the free margin
VIEW_CROP_KEEP = 0.86                                    # crop window side / image side (centre crop included)
VIEW_TONES = ((1.0, 1.0, 1.0), (1.15, 0.9, 1.1), (0.88, 1.12, 0.9))  # brightness, contrast, colour factors
ALL_VIEWS = tuple((m, r, c, t) for m in range(2) for r in range(5) for c in range(5) for t in range(3))
HELDOUT_VIEWS = tuple(v for v in ALL_VIEWS if sum(v) % 5 == 0)
TRAIN_VIEWS = tuple(v for v in ALL_VIEWS if sum(v) % 5 != 0)


def render_view(img: Image.Image, view: tuple[int, int, int, int]) -> Image.Image:
    """The portrait seen through `view` = (mirror, rotation, crop, tone) indices: optional mirror, then rotation
    about the centre and the crop window resized to full size in one affine resample, then the tone factors."""
    m, r, c, t = view
    S = img.size[0]
    out = ImageOps.mirror(img) if VIEW_MIRRORS[m] else img
    theta, keep = math.radians(VIEW_ROTATIONS[r]), VIEW_CROP_KEEP
    x0, y0 = (f * S * (1 - keep) for f in VIEW_CROPS[c])
    # output (u, v) reads input R(theta) @ ((x0, y0) + keep * (u, v) - centre) + centre
    ctr, co, si = S / 2, math.cos(theta), math.sin(theta)
    X0, Y0 = x0 - ctr, y0 - ctr
    coeffs = (co * keep, si * keep, co * X0 + si * Y0 + ctr, -si * keep, co * keep, -si * X0 + co * Y0 + ctr)
    out = out.transform((S, S), Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=img.getpixel((0, 0)))
    for enhance, factor in zip((ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color), VIEW_TONES[t]):
        out = enhance(out).enhance(factor)
    return out


def _look_distance(a: dict[str, str], b: dict[str, str]) -> int:
    return sum(a[k] != b[k] for k in LOOK_FEATURES)


def _draw_look(rng: random.Random, near: dict[str, str] | None = None, changes: int = 0) -> dict[str, str]:
    """A random look; with `near`, a copy of that look with `changes` of its LOOK_FEATURES drawn again (a
    look-alike: the hard negatives that teach a small vision tower exactly which faces it knows)."""
    choices = {"face": list(FACES), "skin": list(SKINS), "hair_colour": list(HAIR_COLOURS),
               "hair_style": HAIR_STYLES, "glasses": GLASSES, "hat": list(HATS), "shirt": list(SHIRTS),
               "background": list(BACKGROUNDS), "pattern": PATTERNS, "eyes": list(EYES), "earrings": ["yes", "no"]}
    if near is None:
        look = {k: rng.choice(v) for k, v in choices.items()}
    else:
        look = dict(near)
        for k in rng.sample(LOOK_FEATURES, changes):
            look[k] = rng.choice([v for v in choices[k] if v != near[k]])
    if look["hat"] != "none" and look["hair_style"] == "bun":   # a bun would hide under the hat
        look["hat"] = "none"
    if look["shirt"] == look["background"]:                      # keep the shirt visible
        look["shirt"] = rng.choice([c for c in SHIRTS if c != look["background"]])
    return look


def stranger_portrait(rng: random.Random) -> Image.Image:
    """The portrait of a random look drawn with `rng`: a face of no one in particular (stage 1's drawn positives,
    `asru_min.steer.positive_questions`)."""
    return draw_portrait(_draw_look(rng))
