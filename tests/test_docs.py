"""The documentation: README.md and the MkDocs site built from docs/ (mkdocs.yml).

The site builds with `--strict` (a broken link, a missing page or anchor, a docstring mkdocstrings cannot
read fails it); every repository path that README and the pages name exists; the layout page names every
module in toolkit/ and nothing that is not there; every `from toolkit... import` line in their Python
examples names something the module defines; the bash blocks marked `<!-- test -->` run; and the built
pages open in headless Chromium without one request leaving the machine.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
# A repository path in the text: toolkit/..., scripts/..., tests/..., docs/..., exported/... (not a part of a
# longer path such as ../shared/x or another repository's owner/name:tests/...).
PATH = re.compile(r"(?<![\w./:-])((?:toolkit|scripts|tests|docs|exported)/[\w./{},*-]*[\w/}*])")
MARKED_BASH = re.compile(r"<!-- test -->[ \t]*\n```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
BUILD_TIMEOUT = 120  # seconds; it takes about 3 (mkdocstrings reads the code statically, imports nothing)
# No `-q`: with it, mkdocs 1.6 drops the warnings before --strict counts them, and a broken link passes.


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=env, cwd=config.parent)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    done = mkdocs_build(ROOT / "mkdocs.yml", folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


def expand(path: str) -> list[str]:
    """`scripts/results/x.{json,md}` -> both names."""
    braces = re.search(r"\{([^}]*)\}", path)
    if not braces:
        return [path]
    return [name for alt in braces.group(1).split(",") for name in expand(path[:braces.start()] + alt + path[braces.end():])]


def test_site_builds_strictly_with_every_page(site):
    built = {p.name for p in site.glob("*.html")}
    assert {p.with_suffix(".html").name for p in DOCS.glob("*.md")} <= built
    api = (site / "api.html").read_text()
    for name in ("export_model", "ExportOptions", "verify_files", "OnnxRunner", "StreamingRunner", "ResourceLimits"):
        assert re.search(rf'id="toolkit\.[\w.]*\b{name}"', api), name  # rendered from the docstrings


def test_a_broken_link_fails_the_strict_build(tmp_path):
    """The strict build is what catches a broken link: the same site with one bad link does not build."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs")
    (tmp_path / "toolkit").symlink_to(ROOT / "toolkit")
    page = tmp_path / "docs" / "limits.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    done = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0 and "no-such-page.md" in done.stdout + done.stderr


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_path_named_exists(page):
    missing = [name for match in PATH.finditer(page.read_text()) for name in expand(match.group(1))
               if not (ROOT / name).exists() and not any(ROOT.glob(name))]
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


def test_readme_is_short_and_keeps_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert ('python3 -m venv .venv && .venv/bin/pip install -e ".[export,test]" && scripts/setup_runtimes.sh '
            "&& .venv/bin/lstm-onnx export") in text
    assert "\n.venv/bin/python -m pytest\n" in text


def layout_names() -> set[str]:
    text = (DOCS / "layout.md").read_text()
    return {part for span in re.findall(r"`([^`\n]+)`", text) for part in re.split(r"[ ,+()]+", span) if part}


def test_layout_names_every_module_and_only_real_ones():
    names = layout_names()
    modules = [p for p in (ROOT / "toolkit").rglob("*.py") if "node_modules" not in p.parts and p.name != "__init__.py"]
    unnamed = [str(p.relative_to(ROOT / "toolkit")) for p in modules
               if not {p.name, p.stem, str(p.relative_to(ROOT / "toolkit"))} & names]
    assert not unnamed, f"docs/layout.md does not name: {unnamed}"
    files = {p.name for p in (ROOT / "toolkit").rglob("*.py")} | {p.name for p in (ROOT / "tests").glob("*.py")}
    invented = [n for n in names if n.endswith(".py") and "/" not in n and n not in files]
    invented += [n for n in names if re.fullmatch(r"[\w/]+/(?:[\w]+\.py)?", n)
                 and not (ROOT / "toolkit" / n).exists() and not (ROOT / n).exists()]
    assert not invented, f"docs/layout.md names modules that do not exist: {invented}"


def defined_names(module: str) -> set[str]:
    """The names a toolkit module defines or imports at its top level, read without importing it."""
    path = ROOT.joinpath(*module.split("."))
    source = path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__init__.py"
    names: set[str] = set()
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_python_examples_import_what_exists():
    checked = 0
    for page in PAGES:
        for block in PYTHON_BLOCK.findall(page.read_text()):
            for node in ast.walk(ast.parse(block)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("toolkit"):
                    absent = [a.name for a in node.names if a.name not in defined_names(node.module)]
                    assert not absent, f"{page.name}: {node.module} defines no {absent}"
                    checked += 1
    assert checked >= 10


def marked_blocks() -> list[tuple[str, str]]:
    return [(page.name, block) for page in PAGES for block in MARKED_BASH.findall(page.read_text())]


@pytest.mark.parametrize("page, block", marked_blocks(), ids=lambda v: v if v.endswith(".md") else "")
def test_marked_bash_blocks_run(page, block, tmp_path):
    """Run in an empty folder holding only a link to exported/, with this interpreter's bin first on PATH."""
    (tmp_path / "exported").symlink_to(ROOT / "exported")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{page}:\n{block}\n{done.stdout}\n{done.stderr}"


def test_some_blocks_are_marked():
    assert len(marked_blocks()) >= 2


LOADS = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?|@import\s+["']?)(https?:)?//""", re.IGNORECASE)


def test_built_html_and_css_load_nothing_from_elsewhere(site):
    """No font, stylesheet, script or image from another host: Material's Google Fonts are off
    (`theme.font: false`), and nothing else names a remote asset. Links to other sites (<a href>) are fine."""
    remote = []
    for path in [*site.rglob("*.html"), *site.rglob("*.css")]:
        text = path.read_text(errors="replace")
        text = re.sub(r"<a\s[^>]*>", "", text)  # a hyperlink is followed only when clicked
        remote += [f"{path.name}: {text[m.start():m.end() + 40]}" for m in LOADS.finditer(text)]
    assert not remote, remote


@pytest.mark.slow
def test_pages_open_in_chromium_without_a_request_leaving_the_machine(site):
    from toolkit.pages.browser import DevToolsPage, serve_folder

    search = """(async () => { const box = document.querySelector('.md-search__input'); box.focus();
      box.value = 'state_map'; box.dispatchEvent(new Event('input', {bubbles: true}));
      box.dispatchEvent(new KeyboardEvent('keyup', {bubbles: true}));
      for (let i = 0; i < 100 && !document.querySelector('.md-search-result__item'); i++)
        await new Promise(r => setTimeout(r, 100));
      return document.querySelectorAll('.md-search-result__item').length })()"""
    pages = sorted(p.name for p in site.glob("*.html"))
    with serve_folder(site) as base, DevToolsPage() as page:
        origin = urlsplit(base).netloc
        for name in pages:
            page.navigate(f"{base}/{name}")
            page.wait_until("document.readyState === 'complete'")
        found = page.evaluate(search)  # the search worker and its index load too
        foreign = [url for url in page.requests if urlsplit(url).scheme not in ("data", "blob")
                   and urlsplit(url).netloc != origin]
        opened = {urlsplit(url).path.lstrip("/") for url in page.requests}
        errors = list(page.errors)
    assert set(pages) <= opened
    assert found > 0, "the site's search found nothing for 'state_map'"
    assert "search/search_index.json" in opened
    assert not foreign, foreign
    assert not errors, errors
