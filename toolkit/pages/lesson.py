"""`explain --html`: the post's lesson as a page. The two-layer stack unrolled over its 3 steps, one panel
per flag combination, the tensors each case returns highlighted and labelled with their shapes and output
names, and the numbers of a live run.

The page is one file that opens offline: onnxruntime-web's WASM bundle (`ort.wasm.bundle.min.mjs` and its
`.wasm`, from the npm package `toolkit/runtimes/js/package-lock.json` pins, where `lstm-onnx setup` put
it: `toolkit.runtimes.js.npm_package`) and the four exported models
are inside it, so the page runs the models itself (`pages/lesson.js`) and a reader who edits the input
`[0.1, 0.2, 0.3]` sees the returned tensors change. The WASM is stored gzip-compressed (14 MB -> 3.7 MB)
and unpacked by the browser's own `DecompressionStream`. The numbers written into the page are ONNX
Runtime's (Python) on the post's input; the page replaces them with onnxruntime-web's once it has run.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from collections.abc import Sequence
from pathlib import Path

from toolkit.fileio import atomic_write_text
from toolkit.pages.explain import ExplainedCase
from toolkit.pages.shell import PAGE_END, esc, page_start
from toolkit.runtimes.js import npm_package

PAGES = Path(__file__).resolve().parent  # the lesson's script, style and text lie beside this module
ORT_MODULE = "ort.wasm.bundle.min.mjs"  # the WASM build with its Emscripten glue bundled in: one module
ORT_WASM = "ort-wasm-simd-threaded.wasm"
ROLE_CLASS = {"sequence": "seq", "last": "last", "state_h": "sh", "state_c": "sc"}
COLUMNS = {"sequence": "2 / 5", "last": "4 / 5", "state_h": "5 / 6", "state_c": "6 / 7"}  # grid columns


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def ort_assets() -> tuple[str, str, str]:
    """onnxruntime-web's module (base64, its source-map comment dropped: nothing may be fetched), its WASM
    (gzip, then base64) and its version, from the installed locked package."""
    package = npm_package("onnxruntime-web")
    module = (package / "dist" / ORT_MODULE).read_text(encoding="utf-8")
    module = re.sub(r"//# sourceMappingURL=\S+\s*$", "", module)
    wasm = gzip.compress((package / "dist" / ORT_WASM).read_bytes(), compresslevel=9, mtime=0)
    version = json.loads((package / "package.json").read_text()).get("version", "?")
    return _b64(module.encode("utf-8")), _b64(wasm), str(version)


def _numbers(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v: .4f}" for v in values) + "]"


def _layer2_cells(case: ExplainedCase) -> list[str]:
    """lstm_2's three steps and its two final states, each showing the numbers of whichever returned
    tensor holds it, or greyed when no output returns it."""
    by_role = {o.role: o for o in case.outputs}
    cells = []
    for step in range(3):
        inner = f"h²<sub>{step + 1}</sub>"
        if "sequence" in by_role:
            name, slot, css = by_role["sequence"].name, step, "seq"
        elif step == 2 and "last" in by_role:
            name, slot, css = by_role["last"].name, 0, "last"
        else:
            cells.append(f'<div class="cell off">{inner}<span>not returned</span></div>')
            continue
        value = by_role["sequence" if css == "seq" else "last"].onnx.reshape(-1, 2)[slot]
        cells.append(f'<div class="cell {css}">{inner}<span class="vals" data-output="{esc(name, limit=None)}" '
                     f'data-slot="{slot}">{_numbers(value)}</span></div>')
    for role, label in (("state_h", "state_h"), ("state_c", "state_c")):
        out = by_role.get(role)
        if out is None:
            cells.append(f'<div class="cell off">{label}<span>not returned</span></div>')
        else:
            cells.append(f'<div class="cell {ROLE_CLASS[role]}">{label}<span class="vals" '
                         f'data-output="{esc(out.name, limit=None)}" data-slot="0">{_numbers(out.onnx.reshape(-1))}</span></div>')
    return cells


def _brackets(case: ExplainedCase) -> list[str]:
    """Under lstm_2's row: one label per returned tensor, spanning the cells it holds, and empty cells
    elsewhere, in column order (so that CSS grid keeps them all on one row)."""
    placed: list[tuple[int, str]] = []
    for out in case.outputs:
        shape = "(" + ", ".join(map(str, out.shape)) + ")"
        values = esc(json.dumps([float(v) for v in out.onnx.reshape(-1)]), limit=None)
        columns = COLUMNS.get(out.role, "2 / 5")
        placed.append((int(columns.split("/")[0]), f'<div class="tensor {ROLE_CLASS.get(out.role, "seq")}" '
                       f'style="grid-column: {columns}" data-output="{esc(out.name, limit=None)}" data-role="{out.role}" '
                       f'data-shape="{esc(json.dumps(list(out.shape)), limit=None)}" data-values="{values}">'
                       f"<b>{esc(out.name, limit=None)}</b> {shape}</div>"))
    covered = {c for out in case.outputs for c in range(*map(int, COLUMNS.get(out.role, "2 / 5").split("/")))}
    placed += [(c, f'<div style="grid-column: {c} / {c + 1}"></div>') for c in range(2, 7) if c not in covered]
    return [item for _, item in sorted(placed)]


def panel(case: ExplainedCase, x: Sequence[float]) -> str:
    """One case: the stack unrolled (input, lstm_1, lstm_2 over 3 steps, lstm_2's final states)."""
    c = case.config
    flags = ", ".join(f"{k}=True" for k in ("return_sequences", "return_state") if getattr(c, k)) or "defaults"
    names = ", ".join(o.name for o in case.outputs)
    grid = ['<div class="hdr"></div>', *(f'<div class="hdr">t = {t}</div>' for t in (1, 2, 3)),
            '<div class="hdr">final state_h</div>', '<div class="hdr">final state_c</div>',
            '<div class="lbl">lstm_2</div>', *_layer2_cells(case), '<div class="lbl">returns</div>', *_brackets(case),
            '<div class="lbl">lstm_1</div>', *(f'<div class="cell l1">h¹<sub>{t}</sub><span>feeds lstm_2</span></div>'
                                               for t in (1, 2, 3)),
            '<div class="cell off">state_h¹</div><div class="cell off">state_c¹</div>',
            '<div class="lbl">input</div>', *(f'<div class="cell in">x<sub>{t + 1}</sub> = <span class="x" '
                                              f'data-step="{t}">{v:g}</span></div>' for t, v in enumerate(x))]
    equal = "".join(f"<li>{esc(line, limit=None)}</li>" for line in case.onnx_equalities) or \
        "<li>no state output: nothing to compare the output with</li>"
    return (f'<section class="case" data-case="{case.number}" data-file="{esc(case.file, limit=None)}">'
            f"<h2>({case.number}) LSTM({c.units}, {flags}) returns [{esc(names, limit=None)}]</h2>"
            f'<p class="file">{esc(case.file, limit=None)}</p><div class="grid">{"".join(grid)}</div>'
            f'<ul class="eq">{equal}</ul></section>')


def lesson_page(cases: Sequence[ExplainedCase], x: Sequence[float] = (0.1, 0.2, 0.3)) -> str:
    """The whole page: intro, input editor, four panels, and the data and runtime the page runs on."""
    module, wasm, version = ort_assets()
    data = {"input": "input", "cases": [{"case": c.number, "file": c.file, "outputs": [o.name for o in c.outputs]}
                                        for c in cases]}
    models = "".join(f'<script type="text/plain" id="model-{c.number}">{_b64(c.model)}</script>' for c in cases)
    editor = "".join(f'<input id="x{i}" type="number" step="0.1" value="{v:g}" aria-label="x{i + 1}">' for i, v in
                     enumerate(x))
    body = [f"<h1>What a Keras LSTM returns: the post's four cases, unrolled</h1>{(PAGES / 'lesson.html').read_text()}",
            f'<div id="editor">input x = [{editor}], shape (1, 3, 1) <span id="status">numbers below: ONNX Runtime '
            "(Python) on [0.1, 0.2, 0.3]</span></div>", *(panel(c, x) for c in cases),
            f"<footer><p>The models run here are lstm-onnx's exports of the post's stacks (the bytes of exported/); "
            f"they run in onnxruntime-web {esc(version, limit=None)}, bundled into this page.</p></footer>"]
    script = (PAGES / "lesson.js").read_text()
    data_json = json.dumps(data).replace("<", "\\u003c")  # no "</script>" can end the data block early
    return (f'{page_start("lstm-onnx: what an LSTM returns", (PAGES / "lesson.css").read_text())}'
            f'{"".join(body)}\n<script type="application/json" id="lesson-data">'
            f'{data_json}</script>{models}<script type="text/plain" id="ort-js">{module}</script>'
            f'<script type="text/plain" id="ort-wasm">{wasm}</script>\n<script type="module">{script}</script>\n'
            f"{PAGE_END}")


def write_lesson(path: str | Path, cases: Sequence[ExplainedCase]) -> Path:
    """Make the page and write it whole (atomically)."""
    return atomic_write_text(path, lesson_page(cases))
