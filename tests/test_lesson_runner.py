import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from rlhf_lessons.course.lesson_runner import run_lessons


def _write(path, checkpoint_source):
    cp = new_code_cell(checkpoint_source)
    cp.metadata["tags"] = ["checkpoint"]
    nb = new_notebook(cells=[new_code_cell("x = 41 + 1\nprint(x)"), cp])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


def test_runner_reports_passed_and_failed_checkpoints(tmp_path, capsys):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _write(nbs / "01_good.ipynb", "assert x == 42")
    _write(nbs / "02_bad.ipynb", "assert x == 43, 'claim failed'")
    reports = run_lessons(nbs, tmp_path / "build")
    assert [(r.lesson, r.checkpoint) for r in reports] == [
        ("01_good", "passed"),
        ("02_bad", "FAILED"),
    ]
    executed = nbformat.read(tmp_path / "build" / "01_good.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "42\n"
    table = capsys.readouterr().out
    assert "01_good" in table and "1/2 passed" in table
