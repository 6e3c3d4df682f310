"""Line charts as PNG, drawn with OpenCV (already a dependency): stacked panels sharing one time axis."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

WIDTH, PANEL_H = 1200, 260
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 90, 30, 36, 30
FONT = cv2.FONT_HERSHEY_SIMPLEX
# BGR
COLORS = {"blue": (180, 90, 20), "orange": (20, 120, 240), "green": (60, 150, 40), "red": (40, 40, 200),
          "grey": (140, 140, 140), "purple": (150, 60, 140)}


@dataclass
class Series:
    name: str
    xs: list[float]
    ys: list[float]
    color: str = "blue"


@dataclass
class Panel:
    title: str
    unit: str
    series: list[Series] = field(default_factory=list)
    y_from_zero: bool = True


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / max(1, target)
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1 or value == 0 else f"{value:.2g}"


def draw(panels: list[Panel], x_label: str, path: Path, title: str = "") -> Path:
    """Draw the panels one under the other (a shared x axis) and write the PNG."""
    top = 40 if title else 0
    height = top + PANEL_H * len(panels) + 20
    img = np.full((height, WIDTH, 3), 255, np.uint8)
    if title:
        cv2.putText(img, title, (MARGIN_L, 28), FONT, 0.7, (0, 0, 0), 2, cv2.LINE_AA)
    all_x = [x for p in panels for s in p.series for x in s.xs]
    x0, x1 = (min(all_x), max(all_x)) if all_x else (0.0, 1.0)
    x1 = x1 if x1 > x0 else x0 + 1
    left, right = MARGIN_L, WIDTH - MARGIN_R
    for k, panel in enumerate(panels):
        oy = top + k * PANEL_H
        upper, lower = oy + MARGIN_T, oy + PANEL_H - MARGIN_B
        ys = [y for s in panel.series for y in s.ys if y == y]
        y0 = 0.0 if panel.y_from_zero or not ys else min(ys)
        y1 = max(ys) if ys else 1.0
        step = _nice_step(max(y1 - y0, 1e-9))
        y0 = math.floor(y0 / step) * step
        y1 = max(y0 + step, math.ceil(y1 * 1.05 / step) * step)

        def px(x: float, y: float, y0: float = y0, y1: float = y1, upper: int = upper,
               lower: int = lower) -> tuple[int, int]:
            return (int(left + (x - x0) / (x1 - x0) * (right - left)),
                    int(lower - (y - y0) / (y1 - y0) * (lower - upper)))

        cv2.putText(img, f"{panel.title} ({panel.unit})", (left, oy + 24), FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        y = y0
        while y <= y1 + 1e-9:
            _, py = px(x0, y)
            cv2.line(img, (left, py), (right, py), (225, 225, 225), 1)
            cv2.putText(img, _label(y), (8, py + 5), FONT, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
            y += step
        xstep = _nice_step(x1 - x0, 10)
        x = math.ceil(x0 / xstep) * xstep
        while x <= x1 + 1e-9:
            qx, _ = px(x, y0)
            cv2.line(img, (qx, lower), (qx, lower + 4), (60, 60, 60), 1)
            cv2.putText(img, _label(x), (qx - 10, lower + 18), FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
            x += xstep
        cv2.rectangle(img, (left, upper), (right, lower), (0, 0, 0), 1)
        legend_x = right - 10
        for s in reversed(panel.series):
            text = s.name
            (tw, _), _ = cv2.getTextSize(text, FONT, 0.5, 1)
            legend_x -= tw + 34
            cv2.line(img, (legend_x, oy + 19), (legend_x + 22, oy + 19), COLORS[s.color], 3)
            cv2.putText(img, text, (legend_x + 26, oy + 24), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
            points = [px(a, b) for a, b in zip(s.xs, s.ys) if b == b]
            for p, q in zip(points, points[1:]):
                cv2.line(img, p, q, COLORS[s.color], 2, cv2.LINE_AA)
            if len(points) == 1:
                cv2.circle(img, points[0], 3, COLORS[s.color], -1)
    cv2.putText(img, x_label, (WIDTH // 2 - 40, height - 4), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path
