"""The course on Google Colab: one repository address decides the "Open in Colab" badges and
where the notebooks' first cell installs ftkit from.

    python -m ftkit.course.colab                       # check the notebooks agree with it
    python -m ftkit.course.colab --repository https://github.com/you/ftkit --ref main --write

`REPOSITORY` and `REF` are the setting. From them come: a badge at the top of every notebook
and solutions notebook, and in the README, opening that notebook from that repository in
Colab; and the default `FTKIT_SOURCE` of the notebooks' environment cell,
`git+REPOSITORY.git@REF`. A notebook opened from a badge therefore installs ftkit from the
repository it was opened from, which exists since Colab just read the notebook there. The
install is a plain one (not `pip install -e`), so `import ftkit` works in the same kernel
right after it, with no restart. A fork or a workshop's copy runs this module with its own
address and `--write`; tests/test_colab.py fails while anything disagrees with the setting.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from ftkit.course.notebooks import notebooks_dir, series_notebooks, solution_notebooks

REPOSITORY = "https://github.com/ftkit-course/ftkit"  # where the course is published
REF = "main"  # the branch or tag the badges open and the first cell installs
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
_BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
_SOURCE = re.compile(r'default = "git\+[^"]*"')
_README_BLOCK = re.compile(r"<!-- colab -->.*?<!-- /colab -->", re.S)


def install_source(repository: str = REPOSITORY, ref: str = REF) -> str:
    """What the environment cell installs on Colab unless FTKIT_SOURCE says otherwise."""
    return f"git+{repository.removesuffix('/').removesuffix('.git')}.git@{ref}"


def colab_url(notebook: Path, repository: str = REPOSITORY, ref: str = REF) -> str:
    """Colab's address for a notebook of the package, read from the repository on GitHub."""
    owner_repo = repository.removesuffix("/").removesuffix(".git").split("github.com/", 1)[1]
    inside = notebook.resolve().relative_to(notebooks_dir().parent.parent).as_posix()
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{ref}/{inside}"


def badge(notebook: Path, repository: str = REPOSITORY, ref: str = REF) -> str:
    """The Markdown of an "Open in Colab" badge for `notebook`."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook, repository, ref)})"


def course_notebooks() -> list[Path]:
    """Every notebook a learner opens: the series and the solutions."""
    return series_notebooks() + solution_notebooks()


def _updated_notebook(path: Path, repository: str, ref: str) -> str:
    """The notebook's text with its badge and the cell's default source from the setting."""
    notebook = json.loads(path.read_text())
    title = notebook["cells"][0]
    lines = "".join(title["source"]).split("\n")
    wanted = badge(path, repository, ref)  # under the title ("# 03 · ...") and a blank line
    at = next((i for i, line in enumerate(lines) if _BADGE.fullmatch(line.strip())), None)
    if at is not None:
        lines[at] = wanted
    else:
        lines = [lines[0], "", wanted, *lines[1:]]
    title["source"] = _split_lines("\n".join(lines))
    cell = next(c for c in notebook["cells"] if c["cell_type"] == "code")
    source = _SOURCE.sub(f'default = "{install_source(repository, ref)}"', "".join(cell["source"]))
    cell["source"] = _split_lines(source)
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def _split_lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def readme_block(repository: str = REPOSITORY, ref: str = REF) -> str:
    """The README's line of badges, one per notebook of the series."""
    links = " ".join(f"[{p.name[:2]}]({colab_url(p, repository, ref)})" for p in series_notebooks())
    first = series_notebooks()[0]
    return (
        f"<!-- colab -->\n{badge(first, repository, ref)} "
        f"Open a notebook in Colab: {links} (the first cell installs ftkit there; "
        "see INSTRUCTORS.md)\n<!-- /colab -->"
    )


def stale(repository: str = REPOSITORY, ref: str = REF, readme: Path | None = None) -> list[str]:
    """The files that disagree with the setting (empty when all agree)."""
    found = [str(p) for p in course_notebooks() if _updated_notebook(p, repository, ref) !=
             p.read_text()]  # fmt: skip
    if readme is not None:
        blocks = _README_BLOCK.findall(readme.read_text())
        if blocks != [readme_block(repository, ref)]:
            found.append(str(readme))
    return found


def write(repository: str = REPOSITORY, ref: str = REF, readme: Path | None = None) -> list[str]:
    """Rewrite the badges, the default install source and the README block; returns what
    changed. The setting itself (REPOSITORY, REF above) is edited by hand."""
    changed = stale(repository, ref, readme)
    for path in course_notebooks():
        path.write_text(_updated_notebook(path, repository, ref))
    if readme is not None:
        text = readme.read_text()
        block = readme_block(repository, ref)
        text = _README_BLOCK.sub(lambda _: block, text) if _README_BLOCK.search(text) else text
        readme.write_text(text)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", default=REPOSITORY)
    parser.add_argument("--ref", default=REF)
    parser.add_argument("--readme", type=Path, help="also the README of a checkout")
    parser.add_argument("--write", action="store_true", help="rewrite what disagrees")
    args = parser.parse_args(argv)
    if args.write:
        changed = write(args.repository, args.ref, args.readme)
        print(f"Rewrote {len(changed)} files." if changed else "Everything agreed already.")
        return 0
    if found := stale(args.repository, args.ref, args.readme):
        print("Disagree with the setting (run with --write):\n  " + "\n  ".join(found))
        return 1
    print("Every badge and install source agrees with", install_source(args.repository, args.ref))
    return 0


if __name__ == "__main__":
    sys.exit(main())
