"""Pixels of the Grad-CAM secondary capture: image, colour overlay, legend.

Pure numpy/Pillow/matplotlib/scipy, no DICOM: :mod:`workers.encode.sc` feeds it a
source frame (an NM frame, or the CT slice through a lesion) and writes what it
returns.  Layout, top to bottom::

    [red band "DEMO - not for clinical use"]   (demo models only)
    [source frame, 8 bit, upscaled to LONG_SIDE on its long side,
     Grad-CAM blended in colour, optionally a region outlined in magenta]
    [legend: model title and version, detail lines (e.g. a lesion's size),
     prediction, one bar per probability, colour bar "Grad-CAM low .. high",
     source line]

The colour map is ``jet`` from blue to pure red (its darkening maroon top is
left out).  The overlay's opacity grows with the heatmap value (0 at "low", ALPHA_MAX at
"high"), so cold regions show the plain scintigram; the colour bar is drawn
with the same blend over mid grey, so it shows what the image shows.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from matplotlib import colormaps, font_manager
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

logger = logging.getLogger(__name__)

LONG_SIDE: Final[int] = 512
MIN_WIDTH: Final[int] = 512  # the legend needs this much room, whatever the frame's shape
COLORMAP: Final[str] = "jet"
# jet darkens from pure red (at 0.875) to maroon at 1.0: over a scintigram a
# dark centre would read as a cold spot, so "high" stops at pure red.
COLORMAP_TOP: Final[float] = 0.875
ALPHA_MAX: Final[float] = 0.6
_PAD: Final[int] = 10
_WHITE: Final[tuple[int, int, int]] = (255, 255, 255)
_GREY: Final[tuple[int, int, int]] = (170, 170, 170)
_YELLOW: Final[tuple[int, int, int]] = (255, 220, 80)
_DEMO_RED: Final[tuple[int, int, int]] = (200, 0, 0)
#: Outline colour: magenta is not in the jet map, so it never reads as heat.
OUTLINE_RGB: Final[tuple[int, int, int]] = (255, 0, 255)
OUTLINE_WIDTH: Final[int] = 2


@dataclass(frozen=True)
class LegendRow:
    """One class probability as the legend lists it."""

    label: str
    probability: float
    predicted: bool


@dataclass(frozen=True)
class LegendText:
    """Everything the legend says.

    ``details`` are lines drawn under the model line; ``prediction``, when set,
    replaces the automatic "Prediction: <predicted row> (p%)" line.
    """

    title: str
    model_line: str
    rows: tuple[LegendRow, ...]
    source_line: str
    disclaimer: str | None
    details: tuple[str, ...] = ()
    prediction: str | None = None


@functools.lru_cache(maxsize=8)
def ui_font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans from matplotlib's own data: present wherever matplotlib is."""
    props = font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal")
    return ImageFont.truetype(font_manager.findfont(props, fallback_to_default=True), size)


def window_to_uint8(frame: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Map a grey frame to 0..255.

    Parameters
    ----------
    frame : numpy.ndarray
        ``(rows, columns)`` values after the modality LUT.
    window : tuple of float, optional
        ``(center, width)`` from the source; when absent, min .. 99.5th
        percentile, so that one hot pixel does not darken the whole gland.

    Returns
    -------
    numpy.ndarray
        ``(rows, columns)`` uint8.
    """
    data = frame.astype(np.float64)
    if window is not None:
        center, width = window
        low, high = center - width / 2.0, center + width / 2.0
    else:
        low, high = float(data.min()), float(np.percentile(data, 99.5))
    if high <= low:
        high = low + 1.0
    return np.round(np.clip((data - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize; Pillow infers the mode from the dtype (uint8 -> L, float32 -> F)."""
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BILINEAR))


def blend(
    grey: np.ndarray,
    heatmap: np.ndarray,
    long_side: int = LONG_SIDE,
    *,
    outline: np.ndarray | None = None,
) -> np.ndarray:
    """Upscale a grey frame and its heatmap and blend the heatmap in colour.

    Parameters
    ----------
    grey : numpy.ndarray
        ``(rows, columns)`` uint8.
    heatmap : numpy.ndarray
        Same shape, values in [0, 1].
    long_side : int
        Size of the result's long side in pixels.
    outline : numpy.ndarray, optional
        Same shape, bool: a region whose contour is drawn in
        :data:`OUTLINE_RGB`, :data:`OUTLINE_WIDTH` pixels wide, just outside
        the region (the region's own pixels stay visible).

    Returns
    -------
    numpy.ndarray
        ``(R, C, 3)`` uint8 with ``max(R, C) == long_side``.
    """
    rows, cols = grey.shape
    scale = long_side / max(rows, cols)
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))  # Pillow: (w, h)
    grey_up = _resize(grey, size).astype(np.float64)
    heat_up = np.clip(_resize(heatmap.astype(np.float32), size), 0.0, 1.0)
    out = _overlay(grey_up, heat_up)
    if outline is not None:
        if outline.shape != grey.shape:
            raise ValueError(f"outline shape {outline.shape} differs from the frame's {grey.shape}")
        region = np.asarray(
            Image.fromarray(outline.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
        ) > 0
        ring = ndimage.binary_dilation(region, iterations=OUTLINE_WIDTH) & ~region
        out[ring] = OUTLINE_RGB
    return out


def _overlay(grey: np.ndarray, heat: np.ndarray) -> np.ndarray:
    colour = colormaps[COLORMAP](heat * COLORMAP_TOP)[..., :3] * 255.0
    alpha = (ALPHA_MAX * heat)[..., None]
    out = (1.0 - alpha) * grey[..., None] + alpha * colour
    return np.round(np.clip(out, 0.0, 255.0)).astype(np.uint8)


def wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _draw_demo_band(canvas: Image.Image, y: int, text: str) -> int:
    font = ui_font(22, bold=True)
    height = 40
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, y, canvas.width, y + height - 1], fill=_DEMO_RED)
    draw.text((canvas.width // 2, y + height // 2), text, font=font, fill=_WHITE, anchor="mm")
    return y + height


def _draw_rows(draw: ImageDraw.ImageDraw, rows: Sequence[LegendRow], y: int, width: int) -> int:
    font, bold = ui_font(14), ui_font(14, bold=True)
    label_w = max(int(draw.textlength(r.label, font=bold)) for r in rows) + 12
    bar_x0, bar_x1 = _PAD + label_w, width - _PAD - 60
    for row in rows:
        f, colour = (bold, _YELLOW) if row.predicted else (font, _WHITE)
        draw.text((_PAD, y), row.label, font=f, fill=colour)
        draw.rectangle([bar_x0, y + 3, bar_x1, y + 15], outline=_GREY)
        filled = bar_x0 + round((bar_x1 - bar_x0) * row.probability)
        if filled > bar_x0:
            draw.rectangle([bar_x0, y + 3, filled, y + 15], fill=colour)
        draw.text((width - _PAD, y), f"{row.probability * 100:.1f}%", font=f, fill=colour, anchor="ra")
        y += 22
    return y


def _draw_colour_bar(canvas: Image.Image, y: int) -> int:
    draw = ImageDraw.Draw(canvas)
    font = ui_font(14)
    label = "Grad-CAM"
    draw.text((_PAD, y), label, font=ui_font(14, bold=True), fill=_WHITE)
    x0 = _PAD + int(draw.textlength(label, font=ui_font(14, bold=True))) + 12
    x0 += int(draw.textlength("low", font=font)) + 8
    x1 = canvas.width - _PAD - int(draw.textlength("high", font=font)) - 8
    ramp = np.linspace(0.0, 1.0, max(2, x1 - x0))[None, :].repeat(16, axis=0)
    bar = _overlay(np.full(ramp.shape, 128.0), ramp)
    canvas.paste(Image.fromarray(bar), (x0, y + 1))
    draw.text((x0 - 8, y), "low", font=font, fill=_WHITE, anchor="ra")
    draw.text((x1 + 8, y), "high", font=font, fill=_WHITE)
    return y + 26


def compose(image: np.ndarray, legend: LegendText) -> np.ndarray:
    """Put the blended image, the legend and (for demo models) the DEMO band together.

    Parameters
    ----------
    image : numpy.ndarray
        ``(R, C, 3)`` uint8, from :func:`blend`.
    legend : LegendText
        What the legend says.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8 RGB, ``W = max(C, MIN_WIDTH)``.
    """
    width = max(image.shape[1], MIN_WIDTH)
    # room enough for every block below; cropped to what was drawn at the end
    height = image.shape[0] + 400 + 22 * len(legend.rows) + 4 * len(legend.title)
    height += sum(40 + 2 * len(line) for line in legend.details)
    height += 2 * len(legend.prediction or "")
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    y = 0
    if legend.disclaimer:
        y = _draw_demo_band(canvas, y, legend.disclaimer)
    canvas.paste(Image.fromarray(image), ((width - image.shape[1]) // 2, y))
    y += image.shape[0] + _PAD
    draw = ImageDraw.Draw(canvas)
    for line in wrap(draw, legend.title, ui_font(16, bold=True), width - 2 * _PAD):
        draw.text((_PAD, y), line, font=ui_font(16, bold=True), fill=_WHITE)
        y += 21
    draw.text((_PAD, y), legend.model_line, font=ui_font(14), fill=_GREY)
    y += 24
    for detail in legend.details:
        for line in wrap(draw, detail, ui_font(14), width - 2 * _PAD):
            draw.text((_PAD, y), line, font=ui_font(14), fill=_WHITE)
            y += 19
    if legend.details:
        y += 5
    predicted = next((r for r in legend.rows if r.predicted), None)
    text: str | None = legend.prediction
    if text is None and predicted is not None:
        text = f"Prediction: {predicted.label} ({predicted.probability * 100:.1f}%)"
    if text is not None:
        for line in wrap(draw, text, ui_font(16, bold=True), width - 2 * _PAD):
            draw.text((_PAD, y), line, font=ui_font(16, bold=True), fill=_YELLOW)
            y += 21
        y += 4
    y = _draw_rows(draw, legend.rows, y, width) + 6
    y = _draw_colour_bar(canvas, y)
    draw.text((_PAD, y), legend.source_line, font=ui_font(12), fill=_GREY)
    y += 18
    if legend.disclaimer:
        y = _draw_demo_band(canvas, y + 4, legend.disclaimer)
    return np.asarray(canvas.crop((0, 0, width, y + _PAD // 2)))
