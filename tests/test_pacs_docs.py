"""What ``deephealth pacs --since`` filters on, as --help and the README's cron recipe say it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deephealth.cli import main

README = Path(__file__).parents[1] / "README.md"


def test_since_help_names_the_study_date_not_the_arrival(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["pacs", "--help"])
    assert exc.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps the text
    since = help_text[help_text.index("--since DATE"):]
    assert "Study Date (0008,0020" in since
    assert "not when it reached the PACS" in since
    assert "look back several days" in since


def test_readme_cron_recipe_looks_back_over_several_days() -> None:
    text = README.read_text(encoding="utf-8")
    cron = [line for line in text.splitlines() if line.startswith("*/5 * * * *  deephealth pacs")]
    assert len(cron) == 1
    since = re.search(r'--since "\$\((date [^)]*)\)"', cron[0])
    assert since, cron[0]
    # today's date alone misses a study dated yesterday that arrives today
    assert since.group(1) == r"date -d '3 days ago' +\%F"
    assert r'--since "$(date +\%F)"' in text  # named only as the pitfall
    assert "filters on the **Study Date** (0008,0020)" in text
