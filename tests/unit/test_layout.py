"""The layout is a rule: the import-linter contract in pyproject.toml holds, and it breaks on an upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
DEPLOYABLE_FOLDERS = ("operator", "api", "gateway", "keyservice", "exchange")


def _importlinter_config() -> dict[str, Any]:
    config: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return config


def _lint_imports(config: Path, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--no-logo", str(config)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_repository_keeps_the_layer_contract() -> None:
    result = _lint_imports(ROOT / "pyproject.toml", ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_package_folder_is_under_the_contract() -> None:
    """A deployable or roof package that exists is analysed (listed in root_packages) and placed in a layer."""
    config = _importlinter_config()
    layered = " ".join(config["contracts"][0]["layers"])
    folders = {"medcloud": ROOT / "medcloud", "medcloud_cli": ROOT / "cli" / "medcloud_cli"}
    folders |= {f"medcloud_{name}": ROOT / name / f"medcloud_{name}" for name in DEPLOYABLE_FOLDERS}
    for package, folder in folders.items():
        assert package in layered, f"{package} has no layer in the import-linter contract"
        if (folder / "__init__.py").exists():
            assert package in config["root_packages"], f"{folder} exists: add {package} to root_packages"


def _write_package(root: Path, package: str, modules: dict[str, str]) -> None:
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("")
    for name, source in modules.items():
        (root / package / f"{name}.py").write_text(source)


def _break_the_contract(tmp_path: Path, importer: str, imported: str) -> subprocess.CompletedProcess[str]:
    """Run the repository's own contract over a tree whose every package is empty but one upward import."""
    config = _importlinter_config()
    for package in config["root_packages"]:
        modules = {"upward": f"import {imported}\n"} if package == importer else {}
        _write_package(tmp_path, package, modules)
    lines = ["[importlinter]", "root_packages ="]
    lines += [f"    {p}" for p in config["root_packages"]]
    for index, contract in enumerate(config["contracts"]):
        lines += [f"[importlinter:contract:{index}]", f"name = {contract['name']}", f"type = {contract['type']}"]
        lines += ["layers ="] + [f"    {layer}" for layer in contract["layers"]]
    ini = tmp_path / "contract.ini"
    ini.write_text("\n".join(lines) + "\n")
    return _lint_imports(ini, tmp_path, pythonpath=str(tmp_path))


def test_the_contract_breaks_when_the_ground_floor_imports_a_deployable(tmp_path: Path) -> None:
    result = _break_the_contract(tmp_path, "medcloud", "medcloud_operator")
    assert result.returncode != 0
    assert "medcloud.upward -> medcloud_operator" in result.stdout


def test_the_contract_breaks_when_one_deployable_imports_another(tmp_path: Path) -> None:
    result = _break_the_contract(tmp_path, "medcloud_gateway", "medcloud_operator")
    assert result.returncode != 0
    assert "medcloud_gateway.upward -> medcloud_operator" in result.stdout


def test_the_contract_breaks_when_a_deployable_imports_the_cli(tmp_path: Path) -> None:
    result = _break_the_contract(tmp_path, "medcloud_operator", "medcloud_cli")
    assert result.returncode != 0
    assert "medcloud_operator.upward -> medcloud_cli" in result.stdout


def test_the_readme_layout_table_matches_the_folders() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    listed = {line.split("`")[1].rstrip("/"): line for line in rows}
    for folder, row in listed.items():
        assert (ROOT / folder).is_dir() or "being written" in row, f"README lists {folder}/, which does not exist"
    packages = {p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("*/medcloud_*/__init__.py")}
    packages.add("medcloud")
    assert packages <= set(listed), f"README's layout table misses {sorted(packages - set(listed))}"


def test_every_test_module_has_a_basename_of_its_own() -> None:
    # pytest imports test modules by basename (rootdir-relative, no __init__.py):
    # two files of one name make the whole run stop at collection.
    tests = Path(__file__).resolve().parents[1]
    seen: dict[str, list[str]] = {}
    for path in tests.rglob("test_*.py"):
        seen.setdefault(path.name, []).append(str(path.relative_to(tests)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
