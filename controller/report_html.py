"""The page around aec's reports: one self-contained HTML file (figures inlined as PNG data, no scripts, no
network), readable styling, and small helpers for tables and figures."""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any, Sequence

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1f3a5f;color:#fff;padding:18px 32px}header h1{margin:0;font-size:26px}
header p{margin:6px 0 0;opacity:.85}main{padding:16px 32px;max-width:1500px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:16px 20px;margin:18px 0}
h2{margin:0 0 10px;font-size:20px;color:#1f3a5f}.figs{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;flex:1 1 560px;max-width:1000px}figure.wide{flex-basis:100%;max-width:100%}figure img{width:100%;height:auto;border:1px solid #e3e6ea}
figcaption{font-size:14px;color:#444;margin-top:4px}table{border-collapse:collapse;font-size:14px}
th,td{border:1px solid #d9dde3;padding:4px 9px;text-align:right}th{background:#eef1f5}
td:first-child,th:first-child{text-align:left}.kv td{text-align:left}.note{color:#7a4b00;font-size:14px}
.scroll{max-height:560px;overflow:auto}
"""


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 10})
    return plt


def png(fig: Any, path: Path | None = None) -> str:
    """The figure as a data: URL (and, with `path`, as a PNG file beside the page); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    data = buf.getvalue()
    if path is not None:
        path.write_bytes(data)
    return "data:image/png;base64," + base64.b64encode(data).decode()


def figure(src: str, caption: str, wide: bool = False) -> str:
    return f'<figure{" class=wide" if wide else ""}><img src="{src}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    h = "".join(f"<th>{esc(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><tr>{h}</tr>{body}</table>'


def section(title: str, body: str) -> str:
    return f"<section><h2>{esc(title)}</h2>{body}</section>"


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            f"content='width=device-width,initial-scale=1'><title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><main>{''.join(sections)}</main>"
            "</body></html>")


def write_page(folder: Path, text: str) -> Path:
    """index.html in `folder`, replaced atomically so a browser never reads half a page."""
    return write_atomic(folder / "index.html", text)


def write_atomic(path: Path, data: str | bytes) -> Path:
    """`path` replaced atomically: a uniquely named temp file in the same folder (two writers never share one),
    then os.replace; the temp file is removed if anything fails."""
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def esc(v: Any) -> str:
    return html.escape(str(v))


def fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
