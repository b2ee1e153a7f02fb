"""`make docs`: the API reference builds from the docstrings without a warning."""

import pytest

from rlhf_lessons.course.api_docs import build_api_docs, public_modules

pytestmark = pytest.mark.slow  # imports every module (transformers, TRL): ~10 s of CPU


def test_api_reference_builds_without_warnings(tmp_path):
    problems = build_api_docs(tmp_path)
    assert problems == [], "\n".join(problems)
    pages = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.html")}
    assert {"index.html", "rlhf_lessons.html", "rlhf_lessons/training.html"} <= pages
    for module in public_modules():
        assert module.replace(".", "/") + ".html" in pages, module
    assert "rlhf_lessons/alignment/dpo.html" in pages  # subpackages' modules, once each
    dpo = (tmp_path / "rlhf_lessons/alignment/dpo.html").read_text()
    assert "train_dpo" in dpo and "Rafailov" in dpo  # the docstrings, with their papers


def test_public_modules_are_the_packages_first_level():
    modules = public_modules()
    assert modules[0] == "rlhf_lessons" and "rlhf_lessons.alignment" in modules
    assert "rlhf_lessons.__main__" not in modules
    assert not any(m.count(".") > 1 for m in modules)
