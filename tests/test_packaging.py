"""The install paths agree: environment.yml vs pyproject, README vs .ci/run, no -march=native."""
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement):
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _environment_names():
    names = set()
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("\ndependencies:", 1)[1].splitlines():
        item = line.strip()
        if not item.startswith("- ") or item.endswith(":"):
            continue
        item = item[2:].strip()
        if item.startswith("-e") or item in ("pip",):
            continue
        names.add(_name(item))
    return names


def test_environment_yml_names_every_pip_dependency():
    project = _pyproject()["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    test = {_name(r) for r in project["optional-dependencies"]["test"]}
    env = _environment_names()
    missing = (runtime | test) - env
    assert not missing, f"environment.yml lacks {sorted(missing)}"
    # and nothing in environment.yml beyond the build/toolchain entries is unknown to pip
    build = {"python", "c-compiler", "cython", "pip"}
    cluster = {_name(r) for r in project["optional-dependencies"]["cluster"]}
    extra = env - runtime - test - cluster - build
    assert not extra, f"environment.yml names {sorted(extra)} that pyproject.toml does not"


def test_build_requirements():
    requires = {_name(r) for r in _pyproject()["build-system"]["requires"]}
    assert {"setuptools", "cython", "numpy"} <= requires


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text().splitlines()
    ci = (ROOT / ".ci" / "run").read_text()
    test_lines = [line for line in readme if "pytest" in line and line.startswith("python3 -m venv")]
    assert test_lines, "README must open with the test command"
    install_and_test = test_lines[0].split("&&")[-2:]
    command = " && ".join(part.strip() for part in install_and_test)
    assert command in ci, f".ci/run must run the README's test command: {command}"


def test_no_native_arch_flags():
    for path in [ROOT / "setup.py", *ROOT.glob("q4core/*.pyx"), *ROOT.glob("q4core/src/*")]:
        code = re.sub(r"#.*|//.*|\"\"\"[\s\S]*?\"\"\"|/\*[\s\S]*?\*/", "", path.read_text())
        assert "march=native" not in code, f"{path.name} asks for -march=native"
