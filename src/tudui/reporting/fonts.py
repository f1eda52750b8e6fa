"""Fonts for the pictures: Latin text in DejaVu Sans, Chinese (and other CJK) class names in a fallback font.

Matplotlib >= 3.6 falls back glyph by glyph along a list of font families, so one list serves a title like
"true 运动鞋 / pred 裤子 97%": DejaVu Sans draws the Latin letters and digits, the first installed CJK family the
ideographs. Only families that are installed go into the list (a missing one makes matplotlib log "findfont: Font
family ... not found" on every draw). When the labels hold characters that no installed font has, matplotlib
would warn once per glyph per picture; instead this module prints one warning per process naming the Debian
package to install, and the pictures still get written (with boxes for those characters).
"""
from __future__ import annotations

import sys
import unicodedata
import warnings
from contextlib import contextmanager
from functools import lru_cache

BASE_FAMILY = "DejaVu Sans"  # ships with matplotlib, so it is always there
# Simplified Chinese first (the course's learners), then the fonts Windows, macOS and Linux distributions ship.
# The serve page's CSS (inference/static/index.html) names the same families; a test keeps the two in step.
CJK_FAMILIES = (
    "Noto Sans CJK SC", "Source Han Sans SC", "Noto Sans SC",  # Google/Adobe (Debian: fonts-noto-cjk)
    "WenQuanYi Micro Hei", "WenQuanYi Zen Hei",                 # Debian: fonts-wqy-microhei, fonts-wqy-zenhei
    "Microsoft YaHei", "SimHei",                                # Windows
    "PingFang SC", "Hiragino Sans GB", "Heiti SC",              # macOS
    "Droid Sans Fallback", "AR PL UMing CN",                    # older Linux and Android
    "Noto Sans CJK JP", "Noto Sans CJK KR", "Noto Sans CJK TC",  # other CJK locales' fonts still cover Hanzi
)
INSTALL_HINT = ("install a CJK font, e.g. `sudo apt-get install fonts-wqy-microhei` (Debian/Ubuntu, 1.6 MB) or "
                "fonts-noto-cjk; macOS and Windows ship one")

_warned = False  # one warning per process, however many pictures a run draws
_rescanned = False


def _installed(families) -> list[str]:
    from matplotlib import font_manager

    known = {f.name for f in font_manager.fontManager.ttflist}
    return [f for f in families if f in known]


def font_families() -> list[str]:
    """[DejaVu Sans, the installed CJK families in preference order]: matplotlib's fallback list."""
    return [BASE_FAMILY] + _installed(CJK_FAMILIES)


@lru_cache(maxsize=None)
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(path).get_charmap())  # code points the font has a glyph for


def _coverage(families: tuple[str, ...]) -> list[frozenset[int]]:
    from matplotlib.font_manager import FontProperties, findfont

    out = []
    for family in families:
        try:
            out.append(_charmap(findfont(FontProperties(family=family), fallback_to_default=False)))
        except (ValueError, RuntimeError, OSError):  # listed but unreadable: it covers nothing
            continue
    return out


def missing_glyphs(text: str, families: list[str] | None = None) -> list[str]:
    """The distinct printable characters of `text` that no font of `families` can draw, in order of appearance."""
    maps = _coverage(tuple(families or font_families()))
    seen: dict[str, None] = {}
    for ch in text:
        if ch.isprintable() and not ch.isspace() and ch not in seen and not any(ord(ch) in m for m in maps):
            seen[ch] = None
    return list(seen)


def _rescan_system_fonts() -> None:
    """Add font files installed after matplotlib built its font cache (e.g. by `make install` a minute ago).

    Matplotlib lists the system's fonts once and caches the list on disk; a font installed later stays invisible
    until that cache is deleted. This runs at most once per process, only when a label needs a font we lack.
    """
    global _rescanned
    if _rescanned:
        return
    _rescanned = True
    from matplotlib import font_manager

    known = {f.fname for f in font_manager.fontManager.ttflist}
    for path in font_manager.findSystemFonts():
        if path not in known:
            try:
                font_manager.fontManager.addfont(path)
            except Exception:  # a broken font file must not stop a picture
                continue


def _is_cjk(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "FULLWIDTH", "BOPOMOFO"))


def warn_missing(chars: list[str]) -> None:
    """One `warning:` line per process naming up to 10 of the characters and what to install."""
    global _warned
    if _warned or not chars:
        return
    _warned = True
    shown = " ".join(chars[:10]) + (f" (+{len(chars) - 10} more)" if len(chars) > 10 else "")
    hint = INSTALL_HINT if any(_is_cjk(c) for c in chars) else "install a font that covers them (e.g. fonts-noto-core)"
    print(f"warning: no installed font can draw {shown} in the pictures' labels (they show as boxes); {hint}",
          file=sys.stderr, flush=True)


def families_for(text: str) -> tuple[list[str], list[str]]:
    """(fallback list, characters still missing) for pictures drawing `text`; rescans and warns once if needed."""
    families = font_families()
    missing = missing_glyphs(text, families)
    if missing and not _rescanned:
        _rescan_system_fonts()
        families = font_families()
        missing = missing_glyphs(text, families)
    warn_missing(missing)
    return families, missing


@contextmanager
def cjk_fonts(fig):
    """Render `fig` (a matplotlib Figure) inside this block: every text gets the fallback list.

    Tick labels matplotlib adds while drawing copy their font from the existing first tick, so setting the family
    on the texts already in the figure is enough; no global rcParams change (pictures may be drawn in threads).
    """
    from matplotlib.text import Text

    texts = fig.findobj(Text)
    families, missing = families_for("".join(t.get_text() for t in texts))
    for t in texts:
        t.set_fontfamily(families)
    if not missing:
        yield families
        return
    with warnings.catch_warnings():
        # warn_missing has said it once for the process; matplotlib would repeat it for every glyph of every picture
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
        yield families
