"""The HTML pages (`verify --html`, `export --html`, `explain --html`) opened in the real headless Chromium
the runtime check drives (`toolkit.pages.browser`): no console error, no request beyond the page's own
origin, the matrix as the JSON report says, one series per runtime or tier in every plot, and the lesson
page rerunning the four models in onnxruntime-web on an edited input, to ONNX Runtime's numbers."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.cli import cli
from toolkit.models.builder import StackConfig, build_stack
from toolkit.pages.browser import DevToolsPage, serve_folder
from toolkit.runtimes.onnxrt import OnnxRunner

ROOT = Path(__file__).resolve().parent.parent
MATRIX_JS = """Array.from(document.querySelectorAll('table.matrix td[data-status]')).map(
  td => [td.dataset.runtime, td.dataset.output, td.dataset.status, td.title])"""
PLOTS_JS = """Array.from(document.querySelectorAll('figure.plot')).map(f => [f.dataset.output,
  JSON.parse(f.dataset.runtimes), f.querySelectorAll('g[id^="' + f.id + '-series-"]').length,
  f.querySelectorAll('g[id^="' + f.id + '-boundary-"]').length, f.querySelectorAll('g[id^="' + f.id + '-atol-"]').length])"""


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def load(folder: Path, name: str, script, ready: str = "document.readyState === 'complete'"):
    """Serve `folder`, open `name` in Chromium, wait for `ready`, run `script(page)`; returns its value and
    the page's requests and errors. Server and browser are stopped before it returns."""
    with serve_folder(folder) as base, DevToolsPage() as page:
        page.navigate(f"{base}/{name}")
        page.wait_until(ready)
        value = script(page)
        origin = urlsplit(base).netloc
        foreign = [url for url in page.requests if not url.startswith(("blob:", "data:")) and urlsplit(url).netloc != origin]
        return value, foreign, list(page.errors)


@pytest.fixture(scope="module")
def sequence_model(tmp_path_factory):
    """A variable-length LSTM stack saved as .keras, exported float32, int8 and --state-io."""
    folder = tmp_path_factory.mktemp("pages")
    build_stack(StackConfig(layers=2, units=8, timesteps=None, features=3, return_sequences=True,
                            return_state=True)).save(folder / "m.keras")
    for name, extra in (("m.onnx", ()), ("q.onnx", ("--quantize", "int8")), ("s.onnx", ("--state-io",))):
        assert invoke("export", folder / "m.keras", "-o", folder / name, *extra).exit_code == 0
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("model, extra", [("q.onnx", ()), ("s.onnx", ("--stream", "1,3,2"))], ids=["int8", "stream"])
def test_report_page_matches_the_json_report(sequence_model, model, extra):
    folder = sequence_model
    runtimes = "onnxruntime,onnxruntime-disabled,reference,openvino"
    common = ["verify", folder / model, "--keras", folder / "m.keras", "--runtimes", runtimes, *extra]
    page_name = model.replace(".onnx", ".html")
    done = invoke(*common, "--html", folder / page_name)
    assert done.exit_code == 0, done.output
    report = json.loads(invoke(*common, "--json").output)
    matrix, foreign, errors = load(folder, page_name, lambda page: (page.evaluate(MATRIX_JS), page.evaluate(PLOTS_JS)))
    assert not foreign and not errors
    cells, plots = matrix
    expected = {}
    for runtime, entry in report["runtimes"].items():
        for output in entry.get("outputs", []):
            expected[(runtime, output["name"])] = output["status"]
        if entry["status"] == "not valid":
            assert {c[2] for c in cells if c[0] == runtime} == {"not valid"}
            assert all(entry["reason"] in c[3] for c in cells if c[0] == runtime)  # the reason on hover
    shown = {(c[0], c[1]): c[2] for c in cells if c[0] in report["runtimes"] and (c[0], c[1]) in expected}
    assert shown == expected
    ran = [r for r, entry in report["runtimes"].items() if entry["status"] != "not valid"]
    tier = " [int8]" if model == "q.onnx" else ""
    series = [f"{r}{tier}" for r in ran] + (["onnxruntime stream 1,3,2"] if extra else [])
    assert plots and all(p[1] == series and p[2] == len(series) and p[4] >= 1 for p in plots)
    assert {p[0] for p in plots} == {"lstm_2_sequence"}
    if extra:  # chunks 1,3,2 over 12 steps start new chunks at steps 1, 4, 6, 7, 10
        assert report["stream"]["length"] == 12 and all(p[3] == 5 for p in plots)


@pytest.mark.slow
def test_lesson_page_reruns_the_four_models_on_an_edited_input(tmp_path):
    done = invoke("explain", "--html", tmp_path / "lesson.html")
    assert done.exit_code == 0, done.output
    x = [0.7, -0.25, 1.5]
    edit = "".join(f"document.getElementById('x{i}').value = '{v}';" for i, v in enumerate(x))

    def rerun(page):
        before = page.evaluate("JSON.parse(document.querySelector('.tensor').dataset.values)")
        page.evaluate(f"{edit} document.getElementById('x2').dispatchEvent(new Event('input')); 1")
        page.wait_until(f"document.body.dataset.input === '{json.dumps(x).replace(' ', '')}'")
        tensors = page.evaluate("Array.from(document.querySelectorAll('section.case .tensor')).map(t => "
                                "[t.closest('section').dataset.file, t.dataset.output, JSON.parse(t.dataset.values)])")
        return before, tensors

    (before, tensors), foreign, errors = load(tmp_path, "lesson.html", rerun, "document.body.dataset.runs === '1'")
    assert not foreign and not errors
    assert len({file for file, _, _ in tensors}) == 4 and len(tensors) == 8
    feeds = {"input": np.array(x, dtype=np.float32).reshape(1, 3, 1)}
    for file, name, values in tensors:
        expected = OnnxRunner(ROOT / "exported" / file).run(feeds)[name].reshape(-1)
        np.testing.assert_allclose(values, expected, atol=1e-5)  # WASM vs CPU: at most 1.5e-6 (README)
    assert not np.allclose(before, tensors[0][2])  # the shown numbers changed with the input


def test_html_path_must_end_in_html(tmp_path):
    result = invoke("explain", "--html", tmp_path / "lesson.txt")
    assert result.exit_code == 2 and "Expected --html PATH ending in .html. Received:" in result.output
    assert not list(tmp_path.iterdir())


def test_names_from_the_model_are_escaped_and_a_failed_write_leaves_nothing(tmp_path):
    import keras

    inputs = keras.Input((None, 2), name="input")
    outputs = keras.layers.LSTM(3, return_sequences=True, name="evil<script>alert(1)<\\script>&")(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "evil.keras")
    assert invoke("export", tmp_path / "evil.keras", "-o", tmp_path / "evil.onnx").exit_code == 0
    done = invoke("verify", tmp_path / "evil.onnx", "--keras", tmp_path / "evil.keras", "--html", tmp_path / "r.html")
    assert done.exit_code == 0, done.output
    page = (tmp_path / "r.html").read_text()
    assert "<script" not in page and "evil&lt;script&gt;alert(1)&lt;\\script&gt;&amp;" in page
    (tmp_path / "folder.html").mkdir()
    failed = invoke("verify", tmp_path / "evil.onnx", "--keras", tmp_path / "evil.keras", "--html", tmp_path / "folder.html")
    assert failed.exit_code == 1 and failed.output.count("\n") == 1 and "Expected a file path to write" in failed.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_export_html_has_one_section_per_model(tmp_path):
    done = invoke("export", "-o", tmp_path / "out", "--timesteps", "none", "--html", tmp_path / "export.html")
    assert done.exit_code == 0, done.output
    page = (tmp_path / "export.html").read_text()
    assert page.count("<h2>lstm2x2_tvar") == 4 and page.count('<figure class="plot"') == 2  # the two sequence cases
    assert page.count('data-status="pass"') == 8 and "PASS</span>" in page


def test_the_versions_table_lists_what_the_registered_runtimes_compute_with(monkeypatch):
    """The report's package rows come from the registry: a runtime registered with its package (one line)
    is listed with its installed version, with no list in `pages/report.py` to edit."""
    from importlib import metadata as package_metadata

    from toolkit.pages.report import TOOL_PACKAGES, versions_html
    from toolkit.runtimes import registry
    from toolkit.runtimes.js import npm_installed
    from toolkit.runtimes.registry import RUNTIMES, Runtime, register, runtime_packages

    packages = runtime_packages()
    assert {"onnxruntime", "onnx", "openvino"} <= set(packages.python)
    assert {"onnxruntime-node", "onnxruntime-web"} <= set(packages.npm)
    assert all(r.package or r.npm for r in RUNTIMES.values())  # every runtime names what computes it
    html = versions_html([])
    for package in dict.fromkeys(TOOL_PACKAGES + packages.python):
        try:
            assert f"<td>{package}</td><td>{package_metadata.version(package)}</td>" in html
        except package_metadata.PackageNotFoundError:
            assert f"<td>{package}</td>" not in html
    assert all((f"<td>{p} (npm)</td>" in html) == npm_installed(p) for p in packages.npm)
    monkeypatch.setattr(registry, "RUNTIMES", dict(RUNTIMES))
    register(Runtime("hypothesis-rt", lambda model: None, lambda path, model: None, package="hypothesis"))
    assert f"<td>hypothesis</td><td>{package_metadata.version('hypothesis')}</td>" in versions_html([])
