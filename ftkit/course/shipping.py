"""Notebook 06's views of what it exported: the files, how each export answered, and
llama.cpp's own runtime when it is installed.

HTML here shows file names and model answers: all of it is escaped.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

# llama.cpp's programs that complete a raw prompt (newer releases: llama-completion; older:
# llama-cli with -no-cnv), the first found runs. Not installable from a package registry on
# ftkit's test machines, so this path has not run there: it runs where you install it.
LLAMA_CPP = ("llama-completion", "llama-cli")


def _link(path: Path) -> str:
    """A link relative to the working folder (where the report is written), escaped."""
    try:
        shown = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        shown = str(path)
    return f"<a href='{html.escape(shown, quote=True)}'><code>{html.escape(shown)}</code></a>"


def size_mb(path: Path) -> float:
    """Megabytes of a file, or of the files in a folder (not below it)."""
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def files_html(files: Sequence[tuple[str, int]], folder: Path) -> str:
    """A table of (name, bytes), as `ftkit.ship.shipped_files` lists them."""
    rows = "".join(
        f"<tr><td><code>{html.escape(name)}</code></td><td>{size / 1e6:,.2f} MB</td></tr>"
        for name, size in files
    )
    total = sum(size for _, size in files) / 1e6
    return (
        f"<p>{_link(Path(folder))}: {len(files)} file{'s' if len(files) != 1 else ''}, "
        f"{total:,.1f} MB</p><table><tr><th>file</th><th>size</th></tr>{rows}</table>"
    )


def exports_html(rows: Sequence[dict], metric: str, questions: int) -> str:
    """One line per export: where it is, its size, its score on the check questions and how
    many of its answers are the merged model's, token for token.

    Each row: "form", "path", "score" (points), "same" (answers identical), and "seconds"
    (loading and answering) when measured.
    """
    noun = "question" if questions == 1 else "questions"
    head = (
        "<tr><th>export</th><th>where</th><th>size</th>"
        f"<th>{html.escape(metric)} on {questions} test {noun}</th>"
        "<th>answers identical to the merged model's</th><th>load + answer</th></tr>"
    )
    body = "".join(
        f"<tr><td>{html.escape(row['form'])}</td>"
        f"<td style='text-align:left'>{_link(Path(row['path']))}</td>"
        f"<td style='white-space:nowrap'>{size_mb(Path(row['path'])):,.0f} MB</td>"
        f"<td>{row['score']:.1f}</td><td>{row['same']} of {questions}</td>"
        f"<td>{(str(round(row['seconds'])) + ' s') if row.get('seconds') else ''}</td></tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


def runtime_demo(gguf_path: str | Path, messages: Sequence[dict], max_new_tokens: int,
                 tokenizer=None) -> str:  # fmt: skip
    """Answer one chat with llama.cpp's own program if it is installed, else say how to get
    it. Returns what to print."""
    program = next((found for name in LLAMA_CPP if (found := shutil.which(name))), None)
    if program is None:
        return (
            "llama.cpp is not installed here (no llama-cli on PATH), so its own runtime did not "
            "run; the GGUF files were checked through transformers' reader above. To run "
            "them: install llama.cpp (https://github.com/ggml-org/llama.cpp: a release "
            "binary, `brew install llama.cpp`, or `winget install llama.cpp`) or Ollama "
            "(https://ollama.com), then run this cell again."
        )
    question = messages[-1]["content"]
    prompt = question
    if tokenizer is not None:  # the chat turns as the model was trained on them
        prompt = tokenizer.apply_chat_template(list(messages), tokenize=False,
                                               add_generation_prompt=True)  # fmt: skip
    command = [program, "-m", str(gguf_path), "-n", str(max_new_tokens), "--temp", "0",
               "--no-display-prompt", "-p", prompt]  # fmt: skip
    if Path(program).name == "llama-cli":
        command.append("-no-cnv")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return f"{program} did not answer within 300 s."
    if done.returncode:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        return f"{' '.join(command)} failed ({done.returncode}):\n{tail}"
    return f"{Path(program).name} answered {question!r}:\n{done.stdout.strip()}"
