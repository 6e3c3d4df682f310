"""Synthetic occluders with exact masks, composited over real mouths: flat and shaded skin-coloured patches, hands,
microphones, hair, glasses and cups, and textured patches of any object; plus the clean-face variations (lipstick,
stubble) a detector must not mistake for one.

Everything is drawn on a stored mouth crop (occlusion_data) whose mesh gives the mouth's place, size and
orientation, so occluders land over none, part or all of the lips. numpy and OpenCV only (the eval uses it too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

KINDS = ("flat_skin", "shaded_skin", "hand", "microphone", "hair", "glass", "textured")
LEFT_CORNER, RIGHT_CORNER = 61, 291
# Face Mesh points on the cheeks beside the nose and above the mouth corners: where the skin colour is sampled.
CHEEK_POINTS = (205, 425, 50, 280)
OUTER_LIPS = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
# Skin tones (BGR) from light to dark, for hands that are not the face's own colour.
SKIN_TONES = np.array([[197, 213, 241], [170, 196, 234], [140, 176, 224], [120, 160, 205], [100, 140, 190],
                       [82, 118, 170], [66, 96, 140], [52, 76, 112], [40, 58, 88], [34, 46, 68]], np.float32)
HAIR_COLOURS = np.array([[20, 20, 22], [30, 38, 50], [40, 60, 90], [60, 90, 130], [90, 140, 190], [140, 180, 210],
                         [150, 150, 155], [40, 50, 120]], np.float32)
SUPER = 4  # sub-pixel bits for OpenCV's drawing


@dataclass
class Mouth:
    """A mouth's geometry in the image it is drawn on.

    Attributes:
        centre: mid-point of the mouth corners.
        right: unit vector from the left to the right corner.
        down: unit vector perpendicular to it, towards the chin.
        width: corner distance.
        lips: outer-lip polygon [20, 2].
    """

    centre: np.ndarray
    right: np.ndarray
    down: np.ndarray
    width: float
    lips: np.ndarray

    @classmethod
    def of(cls, mesh: np.ndarray) -> Mouth:
        """From a face mesh [468, 2] in the image's pixels."""
        left, right_pt = mesh[LEFT_CORNER].astype(np.float64), mesh[RIGHT_CORNER].astype(np.float64)
        d = right_pt - left
        width = max(float(np.hypot(*d)), 1.0)
        right = d / width
        return cls(centre=(left + right_pt) / 2, right=right, down=np.array([-right[1], right[0]]), width=width,
                   lips=mesh[list(OUTER_LIPS)].astype(np.float64))

    def at(self, u: float, v: float) -> np.ndarray:
        """The image point u mouth widths right of the centre and v widths down."""
        return self.centre + self.width * (u * self.right + v * self.down)

    def lip_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """bool [H, W]: inside the outer-lip polygon."""
        canvas = np.zeros(shape, np.uint8)
        cv2.fillPoly(canvas, [_fixed(self.lips)], (1,), lineType=cv2.LINE_8, shift=SUPER)
        return canvas.astype(bool)


@dataclass
class Layer:
    """An occluder drawn over an image.

    Attributes:
        colour: float32 [H, W, 3] BGR in [0, 255] (where alpha > 0).
        alpha: float32 [H, W] in [0, 1]: how much the occluder hides the face (below 1 on edges, glass, blur).
        label: bool [H, W]: the occluder's exact extent (alpha >= 0.5, and all of a glass however clear).
        shadow: float32 [H, W] in [0, 1): how much the occluder darkens the face it does not cover.
    """

    colour: np.ndarray
    alpha: np.ndarray
    label: np.ndarray
    shadow: np.ndarray


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * (1 << SUPER)).astype(np.int32).reshape(-1, 2)


def _coverage(shape: tuple[int, int], draw) -> np.ndarray:
    """float32 [H, W] coverage in [0, 1] of what `draw(canvas)` paints with 255, anti-aliased."""
    canvas = np.zeros(shape, np.uint8)
    draw(canvas)
    return canvas.astype(np.float32) / 255.0


def polygon(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a filled polygon."""
    return _coverage(shape, lambda c: cv2.fillPoly(c, [_fixed(points)], (255,), cv2.LINE_AA, SUPER))


def ellipse(shape: tuple[int, int], centre: np.ndarray, axes: tuple[float, float], angle_deg: float) -> np.ndarray:
    """Anti-aliased coverage of a filled ellipse."""
    pts = cv2.ellipse2Poly((0, 0), (1000, 1000), 0, 0, 360, 4).astype(np.float64) / 1000.0
    rot = math.radians(angle_deg)
    r = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    return polygon(shape, (pts * np.array(axes)) @ r.T + centre)


def capsule(shape: tuple[int, int], a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    """Anti-aliased coverage of a segment a-b thickened to `radius` with round ends."""
    d = np.asarray(b, np.float64) - a
    ang = math.degrees(math.atan2(d[1], d[0]))
    arc0 = cv2.ellipse2Poly((0, 0), (1000, 1000), int(ang + 90), 0, 180, 6).astype(np.float64) / 1000.0 * radius + a
    arc1 = cv2.ellipse2Poly((0, 0), (1000, 1000), int(ang - 90), 0, 180, 6).astype(np.float64) / 1000.0 * radius + b
    return polygon(shape, np.vstack([arc0, arc1]))


def rounded_rect(shape: tuple[int, int], centre: np.ndarray, half: tuple[float, float], angle_deg: float,
                 corner: float) -> np.ndarray:
    """Anti-aliased coverage of a rotated rectangle with rounded corners."""
    hx, hy = half
    corner = min(corner, hx, hy)
    pts = []
    for (sx, sy), start in (((1, 1), 0), ((-1, 1), 90), ((-1, -1), 180), ((1, -1), 270)):
        c = np.array([sx * (hx - corner), sy * (hy - corner)])
        t = np.radians(np.linspace(start, start + 90, 6))
        pts.append(c + corner * np.stack([np.cos(t), np.sin(t)], 1))
    rot = math.radians(angle_deg)
    r = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    return polygon(shape, np.vstack(pts) @ r.T + centre)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: float) -> np.ndarray:
    """float32 [H, W] smooth random field in about [-1, 1] with features `cells` pixels across."""
    h, w = shape
    gh, gw = max(2, int(h / cells) + 2), max(2, int(w / cells) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return field / max(float(np.abs(field).max()), 1e-6)


def blob(rng: np.random.Generator, shape: tuple[int, int], centre: np.ndarray, radius: float) -> np.ndarray:
    """Coverage of a random smooth blob about `radius` across (a star-shaped outline with random bumps)."""
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    r = np.ones_like(t)
    for k in range(1, 5):
        r += rng.uniform(-0.25, 0.25) / k * np.cos(k * t + rng.uniform(0, 2 * math.pi))
    r *= radius * rng.uniform(0.8, 1.2, 2).mean()
    aspect = rng.uniform(0.5, 1.5)
    pts = np.stack([r * np.cos(t) * aspect, r * np.sin(t) / aspect], 1)
    rot = rng.uniform(0, 2 * math.pi)
    rm = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    return polygon(shape, pts @ rm.T + centre)


def cheek_colour(image: np.ndarray, mesh: np.ndarray, width: float) -> np.ndarray:
    """BGR float32 [3]: the median colour of the cheeks beside the nose (the face's own skin)."""
    h, w = image.shape[:2]
    r = max(2, int(0.06 * width))
    pixels = []
    for i in CHEEK_POINTS[:2]:
        x, y = int(round(mesh[i][0])), int(round(mesh[i][1]))
        patch = image[max(0, y - r) : min(h, y + r + 1), max(0, x - r) : min(w, x + r + 1)].reshape(-1, 3)
        if len(patch):
            pixels.append(patch)
    if not pixels:
        return np.array([120, 140, 180], np.float32)
    return np.median(np.concatenate(pixels), axis=0).astype(np.float32)


def _placement(rng: np.random.Generator, mouth: Mouth, cover: str) -> tuple[np.ndarray, float]:
    """A centre for an occluder and its size scale (mouth widths), for 'full', 'part' or 'near' the lips."""
    if cover == "full":
        return mouth.at(rng.normal(0, 0.12), rng.normal(0.05, 0.1)), rng.uniform(1.3, 2.6)
    ang = rng.uniform(0, 2 * math.pi)
    if cover == "part":
        dist = rng.uniform(0.35, 0.8)
        return mouth.at(dist * math.cos(ang), 0.05 + dist * math.sin(ang) * 0.7), rng.uniform(0.6, 1.4)
    dist = rng.uniform(0.9, 1.5)
    return mouth.at(dist * math.cos(ang), 0.1 + dist * math.sin(ang) * 0.8), rng.uniform(0.4, 1.0)


def _shape_of(rng: np.random.Generator, shape: tuple[int, int], centre: np.ndarray, size: float) -> np.ndarray:
    """Coverage of a random plain shape (rectangle, ellipse, polygon, blob) about `size` pixels across."""
    pick = rng.integers(0, 4)
    angle = rng.uniform(0, 180)
    if pick == 0:
        half = (size * rng.uniform(0.3, 0.7), size * rng.uniform(0.3, 0.7))
        return rounded_rect(shape, centre, half, angle, rng.uniform(0, 0.5) * min(half))
    if pick == 1:
        return ellipse(shape, centre, (size * rng.uniform(0.3, 0.65), size * rng.uniform(0.3, 0.65)), angle)
    if pick == 2:
        n = int(rng.integers(3, 8))
        t = np.sort(rng.uniform(0, 2 * math.pi, n))
        r = size * rng.uniform(0.3, 0.75, n)
        return polygon(shape, centre + np.stack([r * np.cos(t), r * np.sin(t)], 1))
    return blob(rng, shape, centre, size * 0.5)


def _layer(colour: np.ndarray, alpha: np.ndarray, label: np.ndarray | None = None,
           shadow: np.ndarray | None = None) -> Layer:
    return Layer(colour=colour.astype(np.float32), alpha=np.clip(alpha, 0, 1).astype(np.float32),
                 label=(alpha >= 0.5) if label is None else label,
                 shadow=np.zeros_like(alpha) if shadow is None else shadow.astype(np.float32))


def _soft_shadow(rng: np.random.Generator, cover: np.ndarray, width: float) -> np.ndarray:
    """A blurred, shifted copy of an occluder's coverage: the shadow it casts on the face."""
    shift = rng.normal(0, 0.08 * width, 2)
    m = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    moved = cv2.warpAffine(cover, m, (cover.shape[1], cover.shape[0]))
    sigma = max(1.0, rng.uniform(0.05, 0.2) * width)
    return cv2.GaussianBlur(moved, (0, 0), sigma) * rng.uniform(0.15, 0.5)


def flat_skin(rng, image, mesh, mouth, cover) -> Layer:
    """A patch of one flat colour: the face's own cheek colour, as a plain hand or a microphone in the issue."""
    centre, scale = _placement(rng, mouth, cover)
    a = _shape_of(rng, image.shape[:2], centre, scale * mouth.width)
    colour = cheek_colour(image, mesh, mouth.width) + rng.normal(0, 2.0, 3) * (rng.random() < 0.5)
    return _layer(np.broadcast_to(np.clip(colour, 0, 255), image.shape).copy(), a)


def shaded_skin(rng, image, mesh, mouth, cover) -> Layer:
    """A skin-coloured patch with light falling off across it, low-frequency blotches and fine grain."""
    h, w = image.shape[:2]
    centre, scale = _placement(rng, mouth, cover)
    a = _shape_of(rng, (h, w), centre, scale * mouth.width)
    base = cheek_colour(image, mesh, mouth.width)
    if rng.random() < 0.3:
        base = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.85, 1.15)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    ramp = ((xx - centre[0]) * math.cos(ang) + (yy - centre[1]) * math.sin(ang)) / (scale * mouth.width)
    light = 1 + rng.uniform(0.05, 0.35) * ramp + rng.uniform(0.0, 0.08) * smooth_noise(rng, (h, w), mouth.width * 0.4)
    grain = rng.normal(0, rng.uniform(0, 4), (h, w)).astype(np.float32)
    colour = base[None, None] * light[..., None] + grain[..., None]
    return _layer(np.clip(colour, 0, 255), a)


def hand(rng, image, mesh, mouth, cover) -> Layer:
    """Fingers (capsules, side by side) from a palm, skin-toned, rounded shading, creases, a soft shadow."""
    h, w = image.shape[:2]
    centre, scale = _placement(rng, mouth, cover)
    wid = mouth.width
    ang = rng.uniform(0, 2 * math.pi)
    along = np.array([math.cos(ang), math.sin(ang)])
    across = np.array([-along[1], along[0]])
    fingers = int(rng.integers(1, 5))
    radius = wid * rng.uniform(0.1, 0.18)
    length = wid * rng.uniform(0.8, 2.2)
    tip_line = centre + along * length * rng.uniform(0.1, 0.5)
    covers = []
    for k in range(fingers):
        offset = (k - (fingers - 1) / 2) * 2 * radius * rng.uniform(0.95, 1.1)
        tip = tip_line + across * offset + along * rng.normal(0, 0.15) * length * (k in (0, fingers - 1))
        covers.append(capsule((h, w), tip, tip - along * length, radius * rng.uniform(0.9, 1.1)))
    palm_c = tip_line - along * (length + radius * fingers * 0.8)
    covers.append(ellipse((h, w), palm_c, (radius * fingers * 1.3, radius * fingers * 1.1),
                          math.degrees(ang) + rng.normal(0, 10)))
    if rng.random() < 0.5:  # a thumb across the others
        a0 = palm_c + across * radius * fingers * rng.choice([-1, 1])
        covers.append(capsule((h, w), a0, a0 + (along + across * rng.normal(0, 0.5)) * length * 0.7, radius * 1.1))
    union = np.maximum.reduce(covers)
    # Each part darkens towards its own outline: rounded fingers, creases where two meet.
    shade = np.zeros((h, w), np.float32)
    for c in covers:
        inner = cv2.distanceTransform((c >= 0.5).astype(np.uint8), cv2.DIST_L2, 3)
        shade = np.maximum(shade, np.clip(inner / (radius * 0.9), 0, 1) ** 0.6)
    tone = cheek_colour(image, mesh, wid) if rng.random() < 0.5 else SKIN_TONES[rng.integers(len(SKIN_TONES))]
    tone = tone * rng.uniform(0.85, 1.15, 3) ** 0.3
    light = (0.62 + 0.38 * shade) * (1 + 0.1 * smooth_noise(rng, (h, w), wid * 0.5))
    colour = tone[None, None] * light[..., None] + rng.normal(0, 2.5, (h, w, 1)).astype(np.float32)
    return _layer(np.clip(colour, 0, 255), union, shadow=_soft_shadow(rng, union, wid) * (1 - union))


def microphone(rng, image, mesh, mouth, cover) -> Layer:
    """A dark rod with a highlight, topped by a mesh ball or a foam head."""
    h, w = image.shape[:2]
    centre, scale = _placement(rng, mouth, cover)
    wid = mouth.width
    head_r = wid * rng.uniform(0.25, 0.7) * min(scale, 1.5)
    ang = math.radians(rng.uniform(40, 140))  # the rod leaves the head downwards, mostly
    down = np.array([math.cos(ang), math.sin(ang)])
    rod_r = head_r * rng.uniform(0.25, 0.5)
    rod = capsule((h, w), centre, centre + down * wid * 4, rod_r)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grey = rng.uniform(15, 70)
    side = ((xx - centre[0]) * -down[1] + (yy - centre[1]) * down[0]) / rod_r
    rod_colour = grey * (1 + 1.8 * np.exp(-((side - rng.uniform(-0.6, 0.6)) ** 2) / 0.05))
    foam = rng.random() < 0.4
    head = ellipse((h, w), centre, (head_r, head_r * (rng.uniform(1.0, 1.4) if foam else 1.0)),
                   math.degrees(ang) + 90)
    dist = np.hypot(xx - centre[0], yy - centre[1]) / head_r
    if foam:
        base = rng.uniform(10, 230, 3).astype(np.float32) if rng.random() < 0.5 else np.full(3, rng.uniform(10, 60))
        texture = 1 + 0.25 * smooth_noise(rng, (h, w), max(2.0, head_r * 0.15)) + rng.normal(0, 0.05, (h, w))
        head_colour = base[None, None] * (texture * (1.05 - 0.3 * dist ** 2))[..., None]
    else:
        base = np.full(3, rng.uniform(30, 170), np.float32)
        period = rng.uniform(2.5, 6)
        grid = (np.sin((xx + yy) * math.pi / period) * np.sin((xx - yy) * math.pi / period) > 0.3).astype(np.float32)
        hl = np.exp(-np.hypot(xx - centre[0] + 0.35 * head_r, yy - centre[1] + 0.35 * head_r) ** 2 / (0.1 * head_r**2))
        head_colour = (base[None, None] * (0.75 + 0.25 * grid)[..., None] * (1.1 - 0.35 * dist ** 2)[..., None]
                       + 120 * hl[..., None])
    colour = np.where(head[..., None] > 0.01, head_colour, np.broadcast_to(rod_colour[..., None], (h, w, 3)))
    union = np.maximum(head, rod)
    return _layer(np.clip(colour, 0, 255), union, shadow=_soft_shadow(rng, union, wid) * (1 - union))


def hair(rng, image, mesh, mouth, cover) -> Layer:
    """Strands of hair: thin curves across the mouth, a few or a curtain."""
    h, w = image.shape[:2]
    centre, scale = _placement(rng, mouth, cover)
    wid = mouth.width
    strands = int(rng.integers(3, 12)) if rng.random() < 0.4 else int(rng.integers(12, 60))
    band = wid * scale * rng.uniform(0.3, 0.8)
    ang = rng.uniform(0.2, math.pi - 0.2) + math.pi / 2 * (rng.random() < 0.3)
    along = np.array([math.cos(ang), math.sin(ang)])
    across = np.array([-along[1], along[0]])
    base = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]
    canvas = np.zeros((h, w), np.uint8)
    colour = np.zeros((h, w, 3), np.float32)
    bend = rng.normal(0, 0.3, 2) * wid
    t = np.linspace(0, 1, 24)[:, None]
    # Three shades of the one colour, each drawn in one call; a later shade lies over an earlier one.
    for group in range(3):
        curves = []
        for _ in range(max(1, strands // 3)):
            off = rng.uniform(-band, band)
            start = centre + across * off - along * wid * rng.uniform(1.0, 2.5)
            end = centre + across * (off + rng.normal(0, 0.3) * wid) + along * wid * rng.uniform(1.0, 2.5)
            c1 = start + (end - start) / 3 + across * (bend[0] + rng.normal(0, 0.1) * wid)
            c2 = start + 2 * (end - start) / 3 + across * (bend[1] + rng.normal(0, 0.1) * wid)
            curves.append(_fixed((1 - t) ** 3 * start + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t**2 * c2
                                 + t**3 * end))
        one = np.zeros((h, w), np.uint8)
        cv2.polylines(one, curves, False, (255,), int(rng.choice([1, 1, 2])), cv2.LINE_AA, SUPER)
        colour[one > canvas] = np.clip(base * (0.75 + 0.25 * group) * rng.uniform(0.9, 1.1), 0, 255)
        canvas = np.maximum(canvas, one)
    a = canvas.astype(np.float32) / 255.0 * rng.uniform(0.85, 1.0)
    return _layer(colour, a, label=a >= 0.4)


def glass(rng, image, mesh, mouth, cover) -> Layer:
    """A glass or cup: the face seen through a tinted, partly clear body (shifted by refraction), with bright and
    dark rims and highlights. The label is the whole body, however clear."""
    h, w = image.shape[:2]
    centre, scale = _placement(rng, mouth, cover)
    wid = mouth.width
    half = (wid * scale * rng.uniform(0.3, 0.55), wid * scale * rng.uniform(0.4, 0.9))
    body = rounded_rect((h, w), centre, half, rng.normal(0, 15) + 90 * (rng.random() < 0.2),
                        min(half) * rng.uniform(0.1, 0.9))
    inside = body >= 0.5
    shift = rng.normal(0, 0.08 * wid, 2)
    zoom = rng.uniform(0.9, 1.15)
    m = np.float32([[zoom, 0, (1 - zoom) * centre[0] + shift[0]], [0, zoom, (1 - zoom) * centre[1] + shift[1]]])
    seen = cv2.warpAffine(image.astype(np.float32), m, (w, h), borderMode=cv2.BORDER_REFLECT)
    seen = cv2.GaussianBlur(seen, (0, 0), rng.uniform(0.3, 2.0))
    tint = rng.uniform(0.6, 1.1, 3).astype(np.float32)
    fill = seen * tint + rng.uniform(0, 40)
    rim = body - cv2.erode(body, np.ones((3, 3), np.uint8), iterations=int(rng.integers(1, 4)))
    rim_colour = rng.choice([rng.uniform(180, 255), rng.uniform(10, 60)])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    streak_x = centre[0] + rng.uniform(-0.6, 0.6) * half[0]
    streak = np.exp(-((xx - streak_x) ** 2) / (2 * (0.06 * half[0]) ** 2)) * inside
    colour = fill * (1 - rim[..., None]) + rim_colour * rim[..., None]
    colour = colour + 150 * streak[..., None] * rng.uniform(0.3, 1.0)
    clear = rng.uniform(0.45, 0.9)
    alpha = np.clip(body * clear + rim * (1 - clear) + streak * 0.5, 0, 1)
    # The glass is over every pixel of its body even where it lets the face through: label the body.
    return _layer(np.clip(colour, 0, 255), alpha, label=body >= 0.5)


def textured(rng, image, mesh, mouth, cover, patches: np.ndarray | None = None,
             other: np.ndarray | None = None) -> Layer:
    """Any object: a shape filled with a background patch of some clip, another face's skin, or a pattern."""
    h, w = image.shape[:2]
    centre, scale = _placement(rng, mouth, cover)
    a = _shape_of(rng, (h, w), centre, scale * mouth.width)
    pick = rng.random()
    if patches is not None and len(patches) and pick < 0.5:
        src = patches[rng.integers(len(patches))].astype(np.float32)
        tex = cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR)
    elif other is not None and pick < 0.75:
        # Another face's cheek and nose (its upper band, above the lips): skin with someone else's texture.
        band = other[: other.shape[0] // 3].astype(np.float32)
        tex = cv2.resize(band, (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        kind = rng.integers(0, 3)
        if kind == 0:
            period = rng.uniform(3, 20)
            t = (np.sin((xx * math.cos(rng.uniform(0, 3)) + yy * math.sin(rng.uniform(0, 3))) / period) > 0)
        elif kind == 1:
            t = smooth_noise(rng, (h, w), rng.uniform(2, 20)) > 0
        else:
            t = rng.random((h, w)) < 0.5
        tex = np.where(t[..., None], c1, c2).astype(np.float32)
        tex = cv2.GaussianBlur(tex, (0, 0), rng.uniform(0.3, 1.5))
    if rng.random() < 0.5:
        tex = tex * (1 + 0.3 * smooth_noise(rng, (h, w), mouth.width))[..., None]
    return _layer(np.clip(tex, 0, 255), a, shadow=_soft_shadow(rng, a, mouth.width) * (1 - a) * (rng.random() < 0.5))


RENDER = {"flat_skin": flat_skin, "shaded_skin": shaded_skin, "hand": hand, "microphone": microphone, "hair": hair,
          "glass": glass, "textured": textured}


def render(kind: str, rng: np.random.Generator, image: np.ndarray, mesh: np.ndarray, cover: str,
           patches: np.ndarray | None = None, other: np.ndarray | None = None) -> Layer:
    """One occluder of a kind (KINDS) over none ('near'), part ('part') or all ('full') of the lips.

    Args:
        kind: one of KINDS.
        rng: random source.
        image: BGR uint8 [H, W, 3] it is drawn over (colours are sampled from it).
        mesh: the face mesh [468, 2] in the image's pixels.
        cover: 'full', 'part' or 'near'.
        patches: background patches [N, s, s, 3] for textured occluders.
        other: another face's crop for textured occluders.
    """
    mouth = Mouth.of(mesh)
    if kind == "textured":
        return textured(rng, image, mesh, mouth, cover, patches, other)
    return RENDER[kind](rng, image, mesh, mouth, cover)


def motion_blur(layer: Layer, rng: np.random.Generator, width: float) -> Layer:
    """The occluder moving during the exposure: colour and alpha smeared along one direction. The label follows
    the smeared alpha (>= 0.5), as a still frame would show it."""
    length = max(3, int(rng.uniform(0.03, 0.15) * width))
    kernel = np.zeros((length, length), np.float32)
    ang = rng.uniform(0, math.pi)
    c = (length - 1) / 2
    cv2.line(kernel, (int(round(c - c * math.cos(ang))), int(round(c - c * math.sin(ang)))),
             (int(round(c + c * math.cos(ang))), int(round(c + c * math.sin(ang)))), (1.0,), 1)
    kernel /= max(kernel.sum(), 1e-6)
    premul = cv2.filter2D(layer.colour * layer.alpha[..., None], -1, kernel)
    alpha = cv2.filter2D(layer.alpha, -1, kernel)
    colour = premul / np.maximum(alpha, 1e-4)[..., None]
    label = (alpha >= 0.5) | (cv2.filter2D(layer.label.astype(np.float32), -1, kernel) >= 0.5)
    return Layer(colour=np.clip(colour, 0, 255), alpha=alpha, label=label, shadow=layer.shadow)


def composite(image: np.ndarray, layers: list[Layer]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw occluders over an image, in order.

    Returns:
        (BGR float32 [H, W, 3], label bool [H, W]: the union of the occluders' extents, alpha float32 [H, W]: how
        much any occluder changed each pixel).
    """
    out = image.astype(np.float32)
    label = np.zeros(image.shape[:2], bool)
    alpha_all = np.zeros(image.shape[:2], np.float32)
    for layer in layers:
        out = out * (1 - layer.shadow[..., None])
        out = out * (1 - layer.alpha[..., None]) + layer.colour * layer.alpha[..., None]
        label |= layer.label
        alpha_all = 1 - (1 - alpha_all) * (1 - layer.alpha)
    return out, label, alpha_all


def lipstick(rng: np.random.Generator, image: np.ndarray, mesh: np.ndarray) -> np.ndarray:
    """The lips re-coloured (red, plum, pink, brown, dark), keeping their shading. Not an occluder."""
    mouth = Mouth.of(mesh)
    lips = cv2.GaussianBlur(mouth.lip_mask(image.shape[:2]).astype(np.float32), (0, 0), max(0.7, mouth.width * 0.01))
    colours = np.array([[40, 30, 180], [80, 40, 120], [120, 100, 210], [50, 70, 120], [40, 30, 60]], np.float32)
    c = colours[rng.integers(len(colours))]
    grey = image.astype(np.float32).mean(axis=2, keepdims=True) / 128.0
    painted = np.clip(c[None, None] * grey, 0, 255)
    k = lips[..., None] * rng.uniform(0.4, 0.85)
    return image.astype(np.float32) * (1 - k) + painted * k


def stubble(rng: np.random.Generator, image: np.ndarray, mesh: np.ndarray) -> np.ndarray:
    """Beard stubble or a moustache: fine dark grain over the skin around (not on) the lips. Not an occluder."""
    h, w = image.shape[:2]
    mouth = Mouth.of(mesh)
    region = ellipse((h, w), mouth.at(0, 0.35), (mouth.width * 1.1, mouth.width * 0.9), math.degrees(
        math.atan2(mouth.right[1], mouth.right[0])))
    lips = cv2.dilate(mouth.lip_mask((h, w)).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
    density = rng.uniform(0.15, 0.6)
    dots = (rng.random((h, w)) < density).astype(np.float32)
    dots = cv2.GaussianBlur(dots, (0, 0), rng.uniform(0.4, 1.0))
    k = np.clip(region * (1 - lips) * dots * rng.uniform(0.3, 0.8), 0, 1)[..., None]
    return image.astype(np.float32) * (1 - k) + rng.uniform(15, 50) * k
