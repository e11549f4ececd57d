"""The README's screenshots, made from the real pages: `verify --html` of an int8 export in every runtime
and `explain --html`, opened in headless Chromium (`toolkit.pages.browser`) and saved as PNGs in docs/.
Also prints each page's size and the time the command took (the README states them).

    python scripts/screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.pages.browser import DevToolsPage, serve_folder  # noqa: E402


def cli(*args: object) -> float:
    """Run the CLI in its own process; the seconds it took."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "toolkit.cli", *map(str, args)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        subprocess.run([sys.executable, "-c", "from toolkit.models.builder import StackConfig, build_stack; build_stack("
                        "StackConfig(layers=2, units=16, timesteps=None, features=4, return_sequences=True, "
                        f"return_state=True)).save({str(folder / 'm.keras')!r})"], cwd=ROOT, check=True)
        cli("export", folder / "m.keras", "-o", folder / "q.onnx", "--quantize", "int8")
        seconds = {"report.html": cli("verify", folder / "q.onnx", "--keras", folder / "m.keras", "--runtimes", "all",
                                      "--html", folder / "report.html"),
                   "lesson.html": cli("explain", "--html", folder / "lesson.html")}
        with serve_folder(folder) as base, DevToolsPage() as page:
            for name, ready in (("report.html", "document.readyState === 'complete'"),
                                ("lesson.html", "document.body.dataset.runs === '1'")):
                page.navigate(f"{base}/{name}")
                page.wait_until(ready)
                page.screenshot(out / name.replace(".html", ".png"), width=1000)
                size = (folder / name).stat().st_size
                print(f"{name}: {size / 1024:.0f} KB, command {seconds[name]:.1f} s; errors {page.errors or 'none'}")


if __name__ == "__main__":
    main()
