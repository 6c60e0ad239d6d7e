"""The built wheel installs into a fresh virtual environment and its CLI works from there.

Slow (``python -m pytest -m slow tests/test_wheel.py``; a few minutes): builds the sdist and,
from it, the wheel of a copy of this checkout, creates a fresh venv, installs torch 2.13.0 and
then ``<wheel>[digits]`` (pip resolves the other dependencies), and runs the CLI from an empty
folder with the checkout off ``sys.path`` (no ``PYTHONPATH``, no user site), so a file that is
only in the source tree (a recipe, ``py.typed``) or an undeclared dependency shows up here.

Skipped only when the wheel cannot be built because ``build`` / ``setuptools`` are unavailable
(not installed, or the package index is unreachable); every other failure fails.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # as in .ci/run: installed first, so pip does not pick a CUDA build
SHIPPED = ["quickstart", "cifar10/resnet20_recu", "imagenet/resnet18_recu"]

# Without git (e.g. an unpacked sdist), everything is copied except VCS data, build outputs,
# caches and local environments (a stale build/lib would otherwise leak deleted files into the
# wheel).
_TOP_IGNORE = {".git", "build", "dist", "runs", ".venv", "venv", ".pytest_cache", ".ruff_cache"}
_ANY_IGNORE = {"__pycache__"}

# pip / build messages meaning the index (not the project) is the problem.
_OFFLINE = re.compile(
    r"No matching distribution found|Could not find a version that satisfies|"
    r"Failed to establish a new connection|Network is unreachable|"
    r"Temporary failure in name resolution|Name or service not known|ProxyError|"
    r"Max retries exceeded|ConnectionError|ReadTimeoutError",
    re.IGNORECASE,
)


@dataclass
class Result:
    cmd: list[str]
    cwd: Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.cmd)}   (cwd {self.cwd}, exit {self.returncode}, "
            f"{self.seconds:.1f}s)\n--- stdout ---\n{self.stdout[-6000:]}\n"
            f"--- stderr ---\n{self.stderr[-6000:]}"
        )


@dataclass
class Env:
    """The fresh venv with the wheel installed, and a log of what ran in it (with timings)."""

    venv: Path
    wheel: Path
    sdist: Path
    source: Path
    env: dict[str, str]
    log: list[str] = field(default_factory=list)

    @property
    def bin(self) -> Path:
        return self.venv / ("Scripts" if os.name == "nt" else "bin")

    @property
    def python(self) -> str:
        return str(self.bin / ("python.exe" if os.name == "nt" else "python"))

    @property
    def bnnkit(self) -> str:
        return str(self.bin / ("bnnkit.exe" if os.name == "nt" else "bnnkit"))

    def run(self, *args: str, cwd: Path, timeout: float = 600) -> Result:
        res = _run(list(args), cwd=cwd, env=self.env, timeout=timeout)
        shown = " ".join(args).replace(str(self.bin) + os.sep, "")
        self.log.append(f"{res.seconds:7.1f}s  {shown[:100]}")
        return res

    def ok(self, *args: str, cwd: Path, timeout: float = 600) -> Result:
        res = self.run(*args, cwd=cwd, timeout=timeout)
        assert res.returncode == 0, res.describe()
        return res


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600):
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        res = Result(cmd, cwd, -1, out, err, time.perf_counter() - start)
        pytest.fail(f"timed out after {timeout:.0f}s\n{res.describe()}")
    return Result(cmd, cwd, proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)


def _clean_env(venv_dir: Path | None = None) -> dict[str, str]:
    """os.environ without anything that puts the checkout (or another environment) on the path
    or points bnnkit elsewhere; with ``venv_dir``, that venv activated."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "BNNKIT_", "VIRTUAL_ENV", "CONDA_PREFIX", "__PYVENV"))
    }
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env["MPLBACKEND"] = "Agg"
    if venv_dir is not None:
        bindir = venv_dir / ("Scripts" if os.name == "nt" else "bin")
        env["VIRTUAL_ENV"] = str(venv_dir)
        env["PATH"] = str(bindir) + os.pathsep + env.get("PATH", "")
    return env


def _git_files() -> list[str] | None:
    """What a clean clone of the checkout would hold once its changes are committed: tracked
    files that still exist plus untracked ones git does not ignore (``None`` without git)."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        return None
    proc = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    names = {n for n in proc.stdout.decode().split("\0") if n}
    return sorted(n for n in names if (REPO / n).is_file() or (REPO / n).is_symlink())


def _copy_checkout(dest: Path) -> Path:
    """The checkout as a clean clone would have it (git-ignored files are not shipped, so a
    source file that .gitignore hides fails the wheel test here rather than on a fresh CI
    machine)."""
    names = _git_files()
    if names is not None:
        for name in names:
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target, follow_symlinks=False)
        return dest

    def ignore(folder: str, names: list[str]) -> set[str]:
        top = Path(folder).resolve() == REPO
        return {
            n
            for n in names
            if n in _ANY_IGNORE
            or n.endswith((".pyc", ".pyo"))
            or (top and (n in _TOP_IGNORE or n.endswith(".egg-info")))
        }

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    return dest


def _on_disk(folder: str, pattern: str) -> list[str]:
    """``REPO/folder/**/pattern`` as repository-relative POSIX paths (no bytecode caches)."""
    return sorted(
        p.relative_to(REPO).as_posix()
        for p in (REPO / folder).rglob(pattern)
        if "__pycache__" not in p.parts
    )


def _hidden_by_git(paths: list[str]) -> str:
    """``git check-ignore -v`` for ``paths`` (which .gitignore rule hides each), if any."""
    if not paths or shutil.which("git") is None:
        return ""
    proc = subprocess.run(
        ["git", "check-ignore", "-v", "--no-index", *paths],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout


def _local_setuptools_ok() -> bool:
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return major >= 77  # pyproject's [build-system] requires


def _build(source: Path, outdir: Path) -> tuple[Path, Path]:
    """sdist, then the wheel built from that sdist (so the sdist must be complete too)."""
    if importlib.util.find_spec("build") is None:
        pytest.skip(
            "cannot build the wheel: the 'build' package is not installed (pip install build)"
        )
    base = [sys.executable, "-m", "build", "--outdir", str(outdir), str(source)]
    env = _clean_env()
    res = _run(base, cwd=source, env=env)
    if res.returncode != 0:
        offline = bool(_OFFLINE.search(res.stdout + res.stderr))
        if _local_setuptools_ok():
            # the isolated build could not get setuptools: build with this environment's
            retry = _run([*base, "--no-isolation"], cwd=source, env=env)
            assert retry.returncode == 0, f"{res.describe()}\n\n{retry.describe()}"
        elif offline:
            pytest.skip(
                "cannot build the wheel: setuptools>=77 is not installed here and the package "
                f"index is unreachable for build isolation\n{res.describe()}"
            )
        else:
            pytest.fail(f"building the sdist / wheel failed\n{res.describe()}")
    wheels, sdists = sorted(outdir.glob("bnnkit-*.whl")), sorted(outdir.glob("bnnkit-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"{os.listdir(outdir)}\n{res.describe()}"
    return wheels[0], sdists[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    t0 = time.perf_counter()
    root = tmp_path_factory.mktemp("wheel")
    source = _copy_checkout(root / "src")
    wheel, sdist = _build(source, root / "dist")
    t_build = time.perf_counter() - t0

    venv_dir = root / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    env = Env(venv_dir, wheel, sdist, source, _clean_env(venv_dir))
    env.log.append(f"{t_build:7.1f}s  copy checkout + python -m build (sdist, wheel)")
    env.ok(env.python, "-m", "pip", "install", TORCH, cwd=root, timeout=1200)
    env.ok(env.python, "-m", "pip", "install", f"{wheel}[digits]", cwd=root, timeout=1200)
    yield env
    print("\nwheel test timings:\n" + "\n".join(env.log))
    print(f"{time.perf_counter() - t0:7.1f}s  total")
    shutil.rmtree(venv_dir, ignore_errors=True)  # over 1 GB (torch); the wheel and copy stay


@pytest.fixture
def empty_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cwd")
    assert not any(d.iterdir())
    return d


def test_wheel_and_sdist_ship_recipes_and_py_typed(installed: Env) -> None:
    # compared with the working tree on disk: a module or recipe there but not in the wheel is
    # a packaging bug, or a file .gitignore hides from every clean clone
    recipes = _on_disk("bnnkit/recipes", "*.yaml")
    modules = _on_disk("bnnkit", "*.py")
    assert len(recipes) > 30 and "bnnkit/recipes/quickstart.yaml" in recipes
    assert not (REPO / "bnnkit/recipes/__init__.py").exists()  # YAML only

    names = zipfile.ZipFile(installed.wheel).namelist()
    missing = [n for n in [*recipes, *modules, "bnnkit/py.typed"] if n not in names]
    assert not missing, (
        f"in the working tree but not in the wheel: {missing}\n"
        f"git check-ignore:\n{_hidden_by_git(missing)}"
    )
    assert sorted(n for n in names if n.startswith("bnnkit/recipes/")) == recipes
    assert sorted(n for n in names if n.endswith(".py")) == modules
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".nbi", ".nbc"))]

    with tarfile.open(installed.sdist) as tar:
        prefix = tar.getnames()[0].split("/")[0] + "/"
        in_sdist = {n.removeprefix(prefix) for n in tar.getnames()}
    missing = [n for n in [*recipes, *modules, "bnnkit/py.typed"] if n not in in_sdist]
    assert not missing, f"not in the sdist: {missing}"


def test_imports_from_site_packages(installed: Env, empty_dir: Path) -> None:
    code = (
        "import bnnkit, pathlib, sys; "
        "assert 'site-packages' in bnnkit.__file__, bnnkit.__file__; "
        "assert (pathlib.Path(bnnkit.__file__).parent / 'py.typed').is_file(); "
        f"assert not any(p.startswith({str(REPO)!r}) for p in sys.path), sys.path; "
        "from bnnkit.config import recipes_dir; print(bnnkit.__file__); print(recipes_dir())"
    )
    res = installed.ok(installed.python, "-c", code, cwd=empty_dir)
    file, recipes = res.stdout.split()
    assert Path(recipes) == Path(file).parent / "recipes", res.describe()
    assert (Path(recipes) / "quickstart.yaml").is_file(), res.describe()


def test_info_commands(installed: Env, empty_dir: Path) -> None:
    run = installed.ok
    res = run(installed.bnnkit, "--version", cwd=empty_dir)
    assert re.search(r"bnnkit \d+\.\d+", res.stdout + res.stderr), res.describe()

    res = run(installed.bnnkit, "list", "recipes", cwd=empty_dir)
    lines = res.stdout.splitlines()
    assert lines and lines[0].startswith("recipes in "), res.describe()
    assert "site-packages" in lines[0], res.describe()
    names = {line.strip() for line in lines[1:]}
    assert set(SHIPPED) <= names, res.describe()
    assert not [n for n in names if n.rsplit("/", 1)[-1].startswith("_")], res.describe()

    res = run(installed.bnnkit, "list", "methods", cwd=empty_dir)
    assert {"recu", "reactnet", "ste"} <= {
        ln.split()[0] for ln in res.stdout.splitlines() if ln.strip()
    }, res.describe()

    res = run(installed.bnnkit, "list", "models", cwd=empty_dir)
    assert "resnet20" in res.stdout and "reactnet_a" in res.stdout, res.describe()
    res = run(installed.bnnkit, "list", "binarizers", cwd=empty_dir)
    assert "approx_sign" in res.stdout, res.describe()
    res = run(installed.python, "-m", "bnnkit", "--version", cwd=empty_dir)
    assert "bnnkit" in res.stdout + res.stderr, res.describe()

    res = run(installed.bnnkit, "summary", "resnet20", cwd=empty_dir)
    assert "total" in res.stdout and "params" in res.stdout, res.describe()
    assert not any(empty_dir.iterdir()), "the info commands wrote files in the current folder"


def test_quickstart_train_eval_report(installed: Env, empty_dir: Path) -> None:
    res = installed.ok(installed.bnnkit, "train", "training.epochs=2", cwd=empty_dir)
    runs = sorted((empty_dir / "runs").glob("quickstart-*"))
    assert len(runs) == 1, f"{runs}\n{res.describe()}"
    run_dir = runs[0]
    for name in ["config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt"]:
        assert (run_dir / name).is_file(), f"{name} missing in {run_dir}\n{res.describe()}"

    # the result table: a header naming top-1, and a stage row with its accuracies
    lines = res.stdout.splitlines()
    header = next((i for i, ln in enumerate(lines) if "top-1" in ln), None)
    assert header is not None, res.describe()
    row = next((ln for ln in lines[header + 1 :] if ln.startswith("stage1")), "")
    accs = [float(x) for x in re.findall(r"\b\d+\.\d+\b", row)]
    assert accs and all(0 <= a <= 100 for a in accs), res.describe()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_top1"] > 50, f"{summary}\n{res.describe()}"  # 2 epochs give ~98%
    assert "epochs: 2" in (run_dir / "config.yaml").read_text(), res.describe()

    rel = str(run_dir.relative_to(empty_dir))
    res = installed.ok(installed.bnnkit, "eval", rel, cwd=empty_dir)
    assert re.search(r"top-1 \d+\.\d+%", res.stdout), res.describe()

    res = installed.ok(installed.bnnkit, "report", rel, cwd=empty_dir)
    assert (run_dir / "report.md").is_file(), res.describe()

    # the deployment commands on the same run: packed file, then its accuracy
    res = installed.ok(installed.bnnkit, "export", rel, "--out", "model.bnn", cwd=empty_dir)
    assert (empty_dir / "model.bnn").is_file() and "packed file" in res.stdout, res.describe()
    res = installed.ok(installed.bnnkit, "predict", "model.bnn", cwd=empty_dir)
    assert re.search(r"top-1 \d+\.\d+%", res.stdout), res.describe()


def test_compare_from_an_empty_folder(installed: Env, empty_dir: Path) -> None:
    res = installed.ok(installed.bnnkit, "compare", "quickstart", "--methods", "ste,reactnet",
                       "--out", "cmp", "training.epochs=1", cwd=empty_dir)  # fmt: skip
    assert (empty_dir / "cmp" / "compare.md").is_file(), res.describe()
    assert "| ste |" in res.stdout and "| reactnet |" in res.stdout, res.describe()


def test_bad_override_is_a_one_line_error(installed: Env, empty_dir: Path) -> None:
    res = installed.run(installed.bnnkit, "train", "training.epochz=3", cwd=empty_dir)
    assert res.returncode == 2, res.describe()
    err = res.stderr.strip()
    assert err.startswith("bnnkit: error:") and "training.epochz" in err, res.describe()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, res.describe()
    assert not (empty_dir / "runs").exists(), res.describe()
