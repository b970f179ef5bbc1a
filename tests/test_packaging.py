"""The wheel ships every package of the checkout.

pyproject.toml lists its packages by hand (the kernels/ directory installs as fused_lrs.kernels
through package-dir), so a new subpackage that is left off that list imports from a checkout and
fails from the wheel, which only CI's wheel check would otherwise catch.
"""

import pathlib

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def test_every_package_is_listed():
    listed = set(_config()["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "fused_lrs").rglob("__init__.py")}
    on_disk |= {"fused_lrs.kernels"}  # kernels/ through package-dir
    assert on_disk <= listed, f"missing from pyproject.toml packages: {sorted(on_disk - listed)}"
    assert listed <= on_disk, f"listed but absent: {sorted(listed - on_disk)}"


def test_kernels_install_under_fused_lrs():
    assert _config()["package-dir"] == {"fused_lrs.kernels": "kernels"}
    assert (ROOT / "kernels" / "__init__.py").is_file()
