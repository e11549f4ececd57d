"""`lstm-onnx setup` and what the commands do with what it installed: the npm packages in a per-user cache
(a real `npm ci` of the shipped lock into a temporary folder), the runtimes found there, the ones missing
listed as "not installed" with the command that installs them, and the package's own surface (the lazy
API, `--version`, py.typed, the sdist manifest and the wheel job CI runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolkit.cli import cli
from toolkit.errors import InputError
from toolkit.runtimes import js
from toolkit.runtimes.install import (
    FAILED,
    INSTALLED,
    MISSING,
    PRESENT,
    SetupResult,
    apt_step,
    lock_problem,
    parse_runtimes,
    setup,
)
from toolkit.runtimes.registry import RUNTIMES, installed_of

ROOT = Path(__file__).resolve().parent.parent
CASE = ROOT / "exported" / "case4_last.onnx"


def invoke(*args: object, env: dict | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def test_runtimes_are_named_or_all_and_an_unknown_one_is_a_malformed_option():
    assert parse_runtimes("all") == (["node", "web", "chromium", "tf-keras", "openvino", "nginx", "triton"], False)
    assert parse_runtimes("web, node,web") == (["web", "node"], True)
    with pytest.raises(InputError, match="Expected --runtimes among .* Received: 'nodejs'"):
        parse_runtimes("nodejs")
    result = invoke("setup", "--runtimes", "nodejs")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output


def test_what_is_installed_is_skipped_and_said_once_per_runtime():
    result = invoke("setup", "--runtimes", "tf-keras,openvino,chromium,nginx", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert [r["runtime"] for r in found["runtimes"]] == ["tf-keras", "openvino", "chromium", "nginx"]
    assert {r["status"] for r in found["runtimes"]} == {PRESENT}
    assert found["runtimes"][0]["detail"].startswith("tf-keras 2.21")


def test_without_root_apt_says_the_one_command_and_fails_only_where_named(monkeypatch, tmp_path):
    (tmp_path / "apt-get").symlink_to("/usr/bin/apt-get")  # apt here, but no browser and no sudo on PATH
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    from toolkit.runtimes.install import Steps

    status, detail = apt_step(Steps(), "chromium-headless-shell", ("chromium-headless-shell", "chromium"))
    assert status == MISSING
    assert detail == "apt-get needs root; run `sudo apt-get install -y --no-install-recommends chromium-headless-shell`"
    assert not SetupResult("chromium", status, detail, explicit=True).ok
    assert SetupResult("chromium", status, detail, explicit=False).ok  # `all`: reported, not an error
    assert not SetupResult("node", FAILED, "npm ci exited with 1").ok  # a step that ran and failed always is
    named = setup(["chromium"], explicit=True)
    assert not named and named.text().startswith("chromium: not installed: apt-get needs root; run `sudo apt-get")


def test_the_pins_come_from_the_distributions_extras():
    from toolkit.runtimes.install import extra_requirements

    assert extra_requirements("runtimes") == ["openvino==2026.4.*"]
    assert "nvidia-pytriton==0.7.*" in extra_requirements("serve")
    assert "tensorflow-cpu==2.21.*" in extra_requirements("export")  # tf-keras is pinned to its minor


def test_a_lock_without_an_integrity_hash_or_from_another_registry_is_refused(tmp_path):
    assert lock_problem(js.LOCK) == ""
    lock = json.loads(js.LOCK.read_text())
    entry = lock["packages"]["node_modules/onnxruntime-web"]
    del entry["integrity"]
    (tmp_path / "a.json").write_text(json.dumps(lock))
    assert lock_problem(tmp_path / "a.json") == "node_modules/onnxruntime-web has no sha512 integrity hash"
    entry["integrity"], entry["resolved"] = "sha512-x", "https://evil.example/onnxruntime-web.tgz"
    (tmp_path / "b.json").write_text(json.dumps(lock))
    assert "resolves outside https://registry.npmjs.org/" in lock_problem(tmp_path / "b.json")


@pytest.fixture(scope="module")
def npm_cache(tmp_path_factory):
    """A real `lstm-onnx setup --runtimes node,web` into a private cache folder."""
    folder = tmp_path_factory.mktemp("js-cache")
    done = subprocess.run([sys.executable, "-m", "toolkit.cli", "setup", "--runtimes", "node,web", "--json"],
                          capture_output=True, text=True, env={**os.environ, js.DIR_VARIABLE: str(folder)}, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder, json.loads(done.stdout)


@pytest.mark.slow
def test_setup_installs_the_locked_npm_packages_in_the_cache_and_the_runtimes_run_from_there(npm_cache, monkeypatch):
    folder, report = npm_cache
    assert [r["status"] for r in report["runtimes"]] == [INSTALLED, INSTALLED]
    modules = folder / "node_modules"
    assert (modules / ".lstm-onnx-lock.sha256").is_file()
    for package, version in js.locked_versions().items():  # every package at the lock's version
        assert js.installed_version(modules / package) == version, package
    monkeypatch.setenv(js.DIR_VARIABLE, str(folder))
    assert js.npm_package("onnxruntime-web") == modules / "onnxruntime-web"  # the cache, not the clone's
    again = invoke("setup", "--runtimes", "node,web")
    assert again.exit_code == 0 and again.output.count(": present: ") == 2, again.output
    result = invoke("verify", CASE, "--runtimes", "onnxruntime-node,onnxruntime-web,chromium")
    assert result.exit_code == 0 and result.output.count("PASS") >= 4, result.output


@pytest.mark.slow
def test_a_package_at_another_version_than_the_lock_is_not_used(npm_cache, monkeypatch, tmp_path):
    folder, _ = npm_cache
    copy = tmp_path / "js"
    (copy / "node_modules" / "onnxruntime-web").mkdir(parents=True)
    manifest = json.loads((folder / "node_modules" / "onnxruntime-web" / "package.json").read_text())
    (copy / "node_modules" / "onnxruntime-web" / "package.json").write_text(json.dumps({**manifest, "version": "1.29.0"}))
    monkeypatch.setenv(js.DIR_VARIABLE, str(copy))
    assert not js.npm_installed("onnxruntime-web")
    with pytest.raises(InputError, match=r"onnxruntime-web 1.29.0, the lock pins 1.30.0 .*setup --runtimes web"):
        js.npm_package("onnxruntime-web")


def test_verify_all_lists_what_is_not_installed_and_runs_the_rest(tmp_path):
    env = {js.DIR_VARIABLE: str(tmp_path / "empty")}  # no npm packages: node, web and chromium are missing
    result = invoke("verify", CASE, "--runtimes", "all", env=env)
    assert result.exit_code == 0, result.output
    for name, setup_name in (("onnxruntime-node", "node"), ("onnxruntime-web", "web"), ("chromium", "chromium")):
        assert f"{name}: not installed: `lstm-onnx setup --runtimes {setup_name}`" in result.output
    assert "[openvino]" in result.output and "[onnxruntime-node]" not in result.output
    page = tmp_path / "r.html"
    assert invoke("verify", CASE, "--runtimes", "all", "--html", page, env=env).exit_code == 0
    assert '<p class="not-installed">chromium: not installed: `lstm-onnx setup --runtimes chromium`</p>' in page.read_text()
    named = invoke("verify", CASE, "--runtimes", "onnxruntime,onnxruntime-web", "--json", env=env)
    assert named.exit_code == 1  # named explicitly: missing is an error, after the others ran
    report = json.loads(named.output)
    assert report["not_installed"] == {"onnxruntime-web": "not installed: `lstm-onnx setup --runtimes web`"}
    assert report["runtimes"]["onnxruntime"]["status"] == "pass"
    alone = invoke("verify", CASE, "--runtimes", "chromium", env=env)
    assert alone.exit_code == 1 and alone.output.strip().splitlines() == [
        "Error: Expected an installed runtime among ['chromium']. Received: chromium: not installed: "
        "`lstm-onnx setup --runtimes chromium`"]


def test_the_registry_says_which_setup_runtime_installs_each(tmp_path, monkeypatch):
    assert {n: r.setup for n, r in RUNTIMES.items() if r.setup} == {
        "onnxruntime-node": "node", "onnxruntime-web": "web", "chromium": "chromium", "openvino": "openvino",
        "openvino-bf16": "openvino"}
    monkeypatch.setenv(js.DIR_VARIABLE, str(tmp_path))
    ready, missing = installed_of(["onnxruntime", "chromium"])
    assert [r.name for r in ready] == ["onnxruntime"] and [r.name for r in missing] == ["chromium"]


def test_explain_html_without_onnxruntime_web_says_how_to_install_it_and_writes_nothing(tmp_path):
    page = tmp_path / "lesson.html"
    result = invoke("explain", "--html", page, env={js.DIR_VARIABLE: str(tmp_path / "empty")})
    assert result.exit_code == 1 and "`lstm-onnx setup --runtimes web`" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not page.exists()


def test_import_toolkit_offers_its_api_lazily_without_tensorflow():
    code = ("import sys, toolkit\nfrom toolkit import *\n"
            "assert all(hasattr(toolkit, n) for n in toolkit.__all__)\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
    import ast

    import toolkit

    assert {"export_model", "export_file", "verify_runtimes", "verify_files", "open_runner"} <= set(toolkit.__all__)
    stub = ast.parse((ROOT / "toolkit" / "__init__.pyi").read_text())  # what type checkers see: the same names
    typed = {alias.asname for node in ast.walk(stub) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert typed == set(toolkit.__all__) - {"__version__"}
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        toolkit.nothing  # noqa: B018


def test_version_says_where_toolkit_is_imported_from():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"lstm-onnx 0.1.0 (import package toolkit, from {ROOT / 'toolkit'})"


def test_the_package_ships_py_typed_and_the_sdist_and_wheel_are_checked_in_ci():
    assert (ROOT / "toolkit" / "py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"py.typed"' in pyproject and "Typing :: Typed" in pyproject
    manifest = (ROOT / "MANIFEST.in").read_text().splitlines()
    assert {"graft tests", "graft scripts", "graft exported", "prune toolkit/runtimes/js/node_modules"} <= set(manifest)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/wheel_check.sh" in ci and "scripts/setup_runtimes.sh" in ci
    assert "lstm-onnx setup" in (ROOT / "scripts" / "setup_runtimes.sh").read_text()


def _without_openvino(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a process where the openvino package cannot be found (as on a machine without it)."""
    code = "import sys; sys.modules['openvino'] = None; from toolkit.cli import main; sys.argv[0] = 'lstm-onnx'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_bench_lists_a_runtime_not_installed_and_refuses_it_where_named():
    done = _without_openvino("bench", str(CASE), "--seconds", "0.3", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert "openvino float32: not installed: `lstm-onnx setup --runtimes openvino`" in done.stdout
    assert "openvino bf16: not installed: `lstm-onnx setup --runtimes openvino`" in done.stdout
    named = _without_openvino("bench", str(CASE), "--runtimes", "onnxruntime,openvino", "--seconds", "0.3")
    assert named.returncode == 1 and named.stderr.strip() == (
        "Error: Expected the runtimes named installed. Received: openvino: not installed: "
        "`lstm-onnx setup --runtimes openvino`")
