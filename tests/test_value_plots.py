"""`verify --html` on many-to-one models (a forecaster, a softmax classifier): each runtime's values against
Keras per sample and the distribution of its errors with the tolerance, drawn from the values the comparison
kept (`toolkit.checking.samples`): the figure's data are the run's numbers (Keras and ONNX Runtime recomputed here on
the same cases), the SVG holds one group per runtime with one mark per value, and a streamed run is a series
of its own."""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from toolkit.checking.inputs import make_cases
from toolkit.checking.samples import MAX_VALUES, SampleValues, merge_samples, sample_values
from toolkit.cli import cli
from toolkit.onnxfile.model import load_onnx
from toolkit.runtimes.keras import keras_outputs
from toolkit.runtimes.onnxrt import OnnxRunner

RUNTIMES = "onnxruntime,reference,openvino"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def many_to_one(tmp_path_factory):
    """A forecaster (LSTM -> Dense(1)) and a classifier (GRU -> Dense(4, softmax)), saved and exported."""
    folder = tmp_path_factory.mktemp("many_to_one")
    for name, layer, head in (("forecast", keras.layers.LSTM, keras.layers.Dense(1, name="forecast")),
                              ("classify", keras.layers.GRU, keras.layers.Dense(4, activation="softmax", name="classes"))):
        inputs = keras.Input((6, 3), name="input")
        keras.Model(inputs, head(layer(8, name="rnn")(inputs))).save(folder / f"{name}.keras")
        done = invoke("export", folder / f"{name}.keras", "-o", folder / f"{name}.onnx")
        assert done.exit_code == 0, done.output
    return folder


def _figures(page: str) -> list[dict]:
    found = []
    for match in re.finditer(r'<figure class="values" id="(plot\d+)" data-output="([^"]*)" data-series="(\d+)" '
                             r'data-runtimes="([^"]*)" data-values="([^"]*)">(.*?)</figure>', page, re.S):
        plot_id, output, count, runtimes, values, body = match.groups()
        found.append({"id": plot_id, "output": output, "series": int(count), "runtimes": json.loads(html.unescape(runtimes)),
                      "values": json.loads(html.unescape(values)), "svg": body})
    return found


def _verify(folder: Path, name: str, *extra: str) -> tuple[dict, list[dict], str]:
    page = folder / f"{name}{len(extra)}.html"
    done = invoke("verify", folder / f"{name}.onnx", "--keras", folder / f"{name}.keras", "--runtimes", RUNTIMES,
                  "--json", "--html", page, *extra)
    assert done.exit_code == 0, done.output
    text = page.read_text()
    return json.loads(done.output), _figures(text), text


@pytest.mark.parametrize("name, output, width", [("forecast", "forecast_output", 1), ("classify", "classes_output", 4)])
def test_the_page_plots_every_runtime_against_keras_with_the_runs_numbers(many_to_one, name, output, width):
    report, figures, page = _verify(many_to_one, name)
    assert "No sequence output" not in page and "<h3>Values against Keras</h3>" in page
    assert [f["output"] for f in figures] == [output]
    figure = figures[0]
    names = RUNTIMES.split(",")
    assert figure["runtimes"] == names and figure["series"] == 3
    data = figure["values"]
    # Keras and ONNX Runtime recomputed on the very cases verify compared (seed 0): the page's numbers.
    keras_model = keras.saving.load_model(many_to_one / f"{name}.keras")
    cases = make_cases(keras_model, 0)
    expected = np.concatenate([keras_outputs(keras_model, c.feeds)[0].reshape(-1) for c in cases])
    with OnnxRunner(load_onnx(many_to_one / f"{name}.onnx")) as ort:
        actual = np.concatenate([ort.run(c.feeds)[output].reshape(-1) for c in cases])
    assert data["width"] == width and len(data["keras"]) == expected.size
    np.testing.assert_allclose(data["keras"], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(data["runtimes"]["onnxruntime"], actual, rtol=1e-6, atol=1e-7)
    for runtime in names:  # each series' largest error is the JSON report's max abs for that runtime
        summary = next(o for o in report["runtimes"][runtime]["outputs"] if o["name"] == output)
        assert math.isclose(data["max_abs"][runtime], summary["max_abs"], rel_tol=1e-5, abs_tol=1e-12)
    svg = figure["svg"]
    for index in range(3):  # one group per runtime in each panel; the tolerance drawn
        assert f'id="{figure["id"]}-series-{index}"' in svg and f'id="{figure["id"]}-errors-{index}"' in svg
    assert f'id="{figure["id"]}-atol-0"' in svg and f'id="{figure["id"]}-bound-0"' in svg
    series = svg.split(f'id="{figure["id"]}-series-0"')[1].split(f'id="{figure["id"]}-series-1"')[0]  # its marks
    if width == 1:  # a scatter on the identity line: one mark per value
        assert f'id="{figure["id"]}-identity"' in svg and series.count("<use ") == expected.size
    else:  # a softmax: Keras' bars per class for the first 3 samples, each runtime's value a mark on them
        assert svg.count(f'id="{figure["id"]}-keras-') == 3 * width and series.count("<use ") == 3 * width


def test_a_streamed_run_is_a_series_of_its_own(tmp_path):
    inputs = keras.Input((None, 3), name="input")
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.LSTM(4, name="rnn")(inputs)))
    model.save(tmp_path / "s.keras")
    assert invoke("export", tmp_path / "s.keras", "-o", tmp_path / "s.onnx", "--state-io").exit_code == 0
    done = invoke("verify", tmp_path / "s.onnx", "--keras", tmp_path / "s.keras", "--stream", "1,3,2", "--html",
                  tmp_path / "s.html")
    assert done.exit_code == 0, done.output
    figures = _figures((tmp_path / "s.html").read_text())
    head = next(f for f in figures if f["output"] == "head_output")
    assert head["runtimes"] == ["onnxruntime", "onnxruntime stream 1,3,2"]
    assert len(head["values"]["runtimes"]["onnxruntime stream 1,3,2"]) == 2 * 2  # batch 2 x 2 units of the stream


def test_sample_values_are_kept_for_outputs_without_a_time_axis_and_bounded():
    assert sample_values(np.zeros((2, 3, 4)), np.zeros((2, 3, 4))) is None  # a sequence: per step instead
    kept = sample_values(np.arange(6.0).reshape(3, 2), np.arange(6.0).reshape(3, 2) + 0.5)
    assert kept.width == 2 and kept.samples == 3 and kept.errors().tolist() == [0.5] * 6
    big = sample_values(np.zeros((5000, 3)), np.zeros((5000, 3)))
    assert len(big.expected) == (MAX_VALUES // 3) * 3  # whole samples, the first ones
    merged = merge_samples([kept, None, kept])
    assert merged.samples == 6 and merged.expected[:6] == kept.expected
    odd = SampleValues((1.0, math.nan, math.inf), (1.0, math.nan, 2.0), 1)
    assert odd.errors().tolist() == [0.0, 0.0, math.inf]
    assert SampleValues((0.2, 0.8, 0.5, 0.5), (0.2, 0.8, 0.5, 0.5), 2).is_softmax()
    assert not SampleValues((0.2, 0.9), (0.2, 0.9), 2).is_softmax() and not SampleValues((1.0,), (1.0,), 1).is_softmax()


@pytest.mark.slow
def test_the_page_opens_in_chromium_with_its_plots_drawn_and_nothing_fetched(many_to_one):
    from urllib.parse import urlsplit

    from toolkit.pages.browser import DevToolsPage, serve_folder

    _verify(many_to_one, "classify")  # classify0.html
    with serve_folder(many_to_one) as base, DevToolsPage() as page:
        page.navigate(f"{base}/classify0.html")
        page.wait_until("document.readyState === 'complete'")
        drawn = page.evaluate("Array.from(document.querySelectorAll('figure.values svg')).map(s => "
                              "[s.getBoundingClientRect().width, s.querySelectorAll('[id*=\"-series-\"]').length])")
        foreign = [u for u in page.requests if urlsplit(u).netloc != urlsplit(base).netloc and not u.startswith("data:")]
        errors = list(page.errors)
    assert drawn and all(width > 300 and series == 3 for width, series in drawn), drawn
    assert not foreign and not errors
