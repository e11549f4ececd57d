"""`lstm-onnx setup`: installs the optional runtimes for an installed lstm-onnx, a wheel or a clone alike.

Each runtime is one step that first checks whether it is already there (and then only says so), so the
command is idempotent. Nothing is written inside the installed package: the npm packages go to the
per-user cache `toolkit.runtimes.js.cache_dir()`, Python packages into the running interpreter, system
packages through apt-get. What each step ran stays quiet unless it fails; the result is one line per
runtime, and a failure is one line too.

- node, web: `npm ci` of the shipped package.json + package-lock.json in the cache (one install serves
  both), with ONNXRUNTIME_NODE_INSTALL=skip (the CPU binary ships inside onnxruntime-node; its install
  script would download from a host this project cannot reach). npm checks every tarball against the
  lock's `integrity` hash; the lock is first checked to give one for every package, and the result is
  checked to hold every package at the lock's version.
- tf-keras: pip `--no-deps`, pinned to the TensorFlow minor of the `export` extra: tf-keras declares
  `tensorflow`, which would install a second TensorFlow over tensorflow-cpu (same import name).
- openvino, triton: pip, pinned by the `runtimes` and `serve` extras of this distribution's metadata.
- chromium, nginx: apt-get, as root or with password-less sudo. Without them the step says the one
  command to run; that is an error only for a runtime named explicitly (not for `all`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from toolkit.errors import InputError
from toolkit.runtimes import js

RUNTIMES = ("node", "web", "chromium", "tf-keras", "openvino", "nginx", "triton")
PRESENT, INSTALLED, MISSING, FAILED = "present", "installed", "not installed", "failed"
STAMP = ".lstm-onnx-lock.sha256"  # in node_modules: the lock file the tree was installed from
NPM_PACKAGES = {"node": "onnxruntime-node", "web": "onnxruntime-web"}
APT = {"chromium": ("chromium-headless-shell", ("chromium-headless-shell", "chromium", "chromium-browser")),
       "nginx": ("nginx", ("nginx",))}
PIP = {"openvino": ("runtimes", ("openvino",)), "triton": ("serve", ("pytriton", "tritonclient"))}
NPM_REGISTRY = "https://registry.npmjs.org/"


@dataclass(frozen=True)
class SetupResult:
    """One runtime's step: present, installed, not installed (with the command that would), or failed."""

    runtime: str
    status: str
    detail: str
    explicit: bool = False  # named in --runtimes (not through `all`)

    @property
    def ok(self) -> bool:
        return self.status in (PRESENT, INSTALLED) or (self.status == MISSING and not self.explicit)

    def line(self) -> str:
        return f"{self.runtime}: {self.status}: {self.detail}"

    def to_json(self) -> dict:
        return {"runtime": self.runtime, "status": self.status, "detail": self.detail, "ok": self.ok}


@dataclass(frozen=True)
class SetupReport:
    results: tuple[SetupResult, ...]

    def __bool__(self) -> bool:
        return all(r.ok for r in self.results)

    def text(self) -> str:
        return "\n".join(r.line() for r in self.results)

    def to_json(self) -> dict:
        return {"passed": bool(self), "runtimes": [r.to_json() for r in self.results]}


def parse_runtimes(text: str) -> tuple[list[str], bool]:
    """`--runtimes`: the names (`all`: every one) and whether they were named explicitly."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(RUNTIMES), False
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown or not names:
        raise InputError(f"Expected --runtimes among {list(RUNTIMES)} or all. Received: {text!r}")
    return list(dict.fromkeys(names)), True


class Steps:
    """Runs the commands of the steps: their output kept for a failure's last line (`verbose`: shown)."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose

    def run(self, command: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        """'' when the command succeeds, else one line: what failed and its last line of output."""
        try:
            done = subprocess.run(list(command), cwd=cwd, env=env, stdin=subprocess.DEVNULL, text=True,
                                  stdout=None if self.verbose else subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as exc:
            return f"{command[0]} did not start: {exc.strerror or exc}"
        if done.returncode == 0:
            return ""
        lines = [line.strip() for line in (done.stdout or "").splitlines() if line.strip()]
        last = f": {lines[-1][:300]}" if lines else ""
        return f"`{' '.join(command[:4])}` exited with {done.returncode}{last}"


def setup(names: Sequence[str] = RUNTIMES, explicit: bool = False, verbose: bool = False) -> SetupReport:
    """Install (or find) each named runtime; one result per name, in the order named."""
    steps = Steps(verbose)
    results: list[SetupResult] = []
    npm_done: list[tuple[str, str]] = []  # one npm install serves node, web and chromium's page

    def npm() -> tuple[str, str]:
        npm_done[:] = npm_done or [npm_step(steps)]
        return npm_done[0]

    for name in names:
        try:
            status, detail = _step(name, steps, npm)
        except InputError as exc:  # e.g. no lstm-onnx metadata to read a pin from: this runtime fails, not all
            status, detail = FAILED, str(exc)
        results.append(SetupResult(name, status, detail, explicit))
    return SetupReport(tuple(results))


def _step(name: str, steps: Steps, npm: Callable[[], tuple[str, str]]) -> tuple[str, str]:
    if name in NPM_PACKAGES:
        status, detail = npm()
        if status in (PRESENT, INSTALLED):
            package = NPM_PACKAGES[name]
            detail = f"{package} {js.installed_version(js.npm_package(package))} {detail}"
        return status, detail
    if name == "chromium":  # the browser, and the onnxruntime-web its page runs
        status, detail = apt_step(steps, *APT[name])
        if status not in (PRESENT, INSTALLED):
            return status, detail
        web_status, web_detail = npm()
        if web_status not in (PRESENT, INSTALLED):
            return web_status, f"onnxruntime-web for its page: {web_detail}"
        return (INSTALLED if INSTALLED in (status, web_status) else PRESENT), f"{detail}; onnxruntime-web {web_detail}"
    if name in APT:
        return apt_step(steps, *APT[name])
    if name == "tf-keras":
        return tf_keras_step(steps)
    return pip_step(steps, *PIP[name])


# ------------------------------------------------------------------------------------------------ npm


def lock_problem(lock: Path) -> str:
    """Why npm could install something the lock does not pin by hash: a package without an sha512
    `integrity`, or one resolved from another registry. '' for a sound lock."""
    packages = json.loads(lock.read_text(encoding="utf-8")).get("packages", {})
    for key, entry in packages.items():
        if not key.startswith("node_modules/"):
            continue
        if not str(entry.get("integrity", "")).startswith("sha512-"):
            return f"{key} has no sha512 integrity hash"
        if not str(entry.get("resolved", NPM_REGISTRY)).startswith(NPM_REGISTRY):
            return f"{key} resolves outside {NPM_REGISTRY}"
    return ""


def version_problem(modules: Path, lock: Path) -> str:
    """The first package whose installed version is not the lock's; '' when every one is."""
    for package, version in js.locked_versions(lock).items():
        found = js.installed_version(modules / package)
        if found != version:
            return f"{package} {found or 'missing'}, the lock pins {version}"
    return ""


def lock_digest(lock: Path = js.LOCK) -> str:
    return hashlib.sha256(lock.read_bytes()).hexdigest()


def npm_step(steps: Steps) -> tuple[str, str]:
    """Both npm packages, by one `npm ci` in the cache; present where the runtimes already find them."""
    if all(js.npm_installed(p) for p in NPM_PACKAGES.values()):
        return PRESENT, f"in {js.npm_package(NPM_PACKAGES['web']).parent}"
    if not (shutil.which("node") and shutil.which("npm")):
        return MISSING, "needs Node.js 20 or later with npm on PATH; run `apt-get install -y nodejs npm`"
    found = lock_problem(js.LOCK)
    if found:
        return FAILED, f"Expected a lock file pinning every package by its sha512 hash. Received: {found}"
    folder = js.cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(js.JS_DIR / name, folder / name)
    except OSError as exc:
        return FAILED, f"Expected a writable cache folder {folder}. Received: {exc.strerror or exc}"
    env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}
    error = steps.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder, env=env)
    if error:
        return FAILED, error
    found = version_problem(folder / "node_modules", folder / "package-lock.json")
    if found:
        return FAILED, f"Expected npm ci to install the locked versions. Received: {found}"
    (folder / "node_modules" / STAMP).write_text(lock_digest() + "\n")
    return INSTALLED, f"in {folder / 'node_modules'} (npm ci: every tarball checked against package-lock.json's sha512)"


# ------------------------------------------------------------------------------------------------ apt


def _on_path(binaries: Sequence[str]) -> str | None:
    for name in binaries:  # /usr/sbin is not on every user's PATH (nginx lives there)
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
        if found:
            return found
    return None


def _root_prefix() -> list[str] | None:
    """[] as root, ['sudo', '-n'] where sudo works without a password, None otherwise."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def apt_step(steps: Steps, package: str, binaries: Sequence[str]) -> tuple[str, str]:
    found = _on_path(binaries)
    if found:
        return PRESENT, found
    command = f"sudo apt-get install -y --no-install-recommends {package}"
    if not shutil.which("apt-get"):
        return MISSING, f"no apt-get here; install {package} with the system's package manager ({' or '.join(binaries)} on PATH)"
    prefix = _root_prefix()
    if prefix is None:
        return MISSING, f"apt-get needs root; run `{command}`"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    error = (steps.run([*prefix, "apt-get", "update", "-qq"], env=env) or
             steps.run([*prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends", package], env=env))
    if error:
        return FAILED, error
    found = _on_path(binaries)
    return (INSTALLED, f"{found} (apt-get install {package})") if found else \
        (FAILED, f"Expected {' or '.join(binaries)} on PATH after apt-get install {package}. Received: none")


# ------------------------------------------------------------------------------------------------ pip


def extra_requirements(extra: str) -> list[str]:
    """The requirements of one extra of the installed lstm-onnx distribution (its pins, one source)."""
    try:
        requires = metadata.requires("lstm-onnx") or []
    except metadata.PackageNotFoundError:
        raise InputError("Expected lstm-onnx installed (pip install lstm-onnx, or pip install -e . in a clone). "
                         "Received: no lstm-onnx distribution") from None
    marker = f'extra == "{extra}"'
    return [r.split(";")[0].strip() for r in requires if marker in r]


def _importable(modules: Sequence[str]) -> bool:
    importlib.invalidate_caches()
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


def _pip(steps: Steps, requirements: Sequence[str], modules: Sequence[str], no_deps: bool = False) -> tuple[str, str]:
    names = [r.split("=")[0].split(">")[0].split("[")[0].strip() for r in requirements]
    if _importable(modules):
        return PRESENT, ", ".join(f"{n} {_version(n)}" for n in names)
    flags = ["--no-deps"] if no_deps else []
    error = steps.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *flags,
                       *requirements])
    if error:
        return FAILED, error
    if not _importable(modules):
        return FAILED, f"Expected {', '.join(modules)} importable after pip install. Received: not importable"
    what = ", ".join(f"{n} {_version(n)}" for n in names)
    return INSTALLED, f"{what} (pip install {' '.join(flags + list(requirements))} into {sys.prefix})"


def pip_step(steps: Steps, extra: str, modules: Sequence[str]) -> tuple[str, str]:
    return _pip(steps, extra_requirements(extra), modules)


def tf_keras_step(steps: Steps) -> tuple[str, str]:
    """tf-keras at the TensorFlow minor of the `export` extra, without its `tensorflow` dependency."""
    if not _importable(["tensorflow"]) and not _importable(["tf_keras"]):
        return MISSING, "needs TensorFlow first; run `pip install 'lstm-onnx[export]'`"
    pin = next((r.split("==", 1)[1] for r in extra_requirements("export") if r.startswith("tensorflow-cpu==")), "")
    status, detail = _pip(steps, [f"tf-keras=={pin}" if pin else "tf-keras"], ["tf_keras"], no_deps=True)
    if status == INSTALLED:  # say why --no-deps: its `tensorflow` requirement is met by tensorflow-cpu
        detail += "; without its dependencies: tensorflow-cpu is its TensorFlow"
    return status, detail
