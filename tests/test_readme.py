"""Every example of README.md runs as written, on tiny local checkpoints: each ```python block (executed in a fresh
namespace) and each ``xlmrxl ...`` line of the ```bash / ```sh blocks (run by a shell, ``xlmrxl`` on PATH), with the
substitutions a user makes (``/path/to/...`` and ``DIR`` -> a local checkpoint, ``device="cuda"`` -> the CPU,
``[--opt]`` -> ``--opt``, the demo shortened to ``--quick``).

A block that cannot run here carries a marker just before it (blank lines between allowed):
``<!-- readme-test: skip (the reason) -->``; it is reported as skipped with that reason. Blocks are found afresh at
each run, so sections added later are tested too; a block with a ``/path/to/...`` this file does not know fails,
naming it (add it to ``PATHS`` or mark the block)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_corpus import make_checkpoint

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((.*?)\)\s*-->", re.S)
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
SHAPE = dict(hidden_size=128, num_attention_heads=2, intermediate_size=256)  # int4 group 128 fits
CLI_TIMEOUT = 300


def readme_blocks() -> list[tuple[int, str, str, str | None]]:
    """``(line, language, code, skip reason)`` of every fenced python / bash / sh block."""
    text = README.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        lang = m.group(1).lower()
        if lang not in ("python", "bash", "sh", "shell"):
            continue
        before = text[: m.start()].rstrip()
        marker = SKIP.search(before.splitlines()[-1]) if before.splitlines() else None
        line = text.count("\n", 0, m.start()) + 1
        out.append((line, "python" if lang == "python" else "bash", m.group(2), marker.group(1) if marker else None))
    return out


BLOCKS = readme_blocks()


@pytest.fixture(scope="module")
def workspace(spm_dir, tmp_path_factory):
    """A directory with the files the examples name and the checkpoints they point at."""
    d = tmp_path_factory.mktemp("readme")
    ckpts = {
        "mlm": make_checkpoint(d / "xlm-roberta-xl", spm_dir, **SHAPE),
        "decoder": make_checkpoint(d / "decoder", spm_dir, "XLMRobertaXLForCausalLM", is_decoder=True, **SHAPE),
        "classifier": make_checkpoint(
            d / "classifier", spm_dir, "XLMRobertaXLForSequenceClassification", num_labels=2, **SHAPE
        ),
    }
    lines = ["The ferry leaves at <mask>.", "Le marché ouvre à <mask> heures.", "Der Zug fährt um <mask> ab."]
    (d / "texts.txt").write_text("\n".join(f"calibration text {i}: the weather is mild" for i in range(16)) + "\n")
    (d / "sentences.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (d / "reviews.txt").write_text("a fine film\na dull, long film\n")
    (d / "texts").mkdir()
    (d / "texts" / "a.txt").write_text("first row\nsecond row\nthird row\n")
    bin_dir = d / "bin"
    bin_dir.mkdir()
    (bin_dir / "xlmrxl").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m xlmrxl "$@"\n')
    (bin_dir / "xlmrxl").chmod(0o755)
    return d, ckpts


def paths(d: Path, ckpts: dict) -> list[tuple[str, str]]:
    """``/path/to/...`` (longest first) and placeholders -> what exists here."""
    return [
        ("/path/to/xlm-roberta-xl-int4", str(d / "out-int4")),
        ("/path/to/xlm-roberta-xl", str(ckpts["mlm"])),
        ("/path/to/decoder", str(ckpts["decoder"])),
        ("/path/to/classifier", str(ckpts["classifier"])),
    ]


def substitute(code: str, d: Path, ckpts: dict) -> str:
    for old, new in paths(d, ckpts):
        code = code.replace(old, new)
    unknown = re.findall(r"/path/to/[\w./-]*", code)
    if unknown:
        pytest.fail(
            f"README block names {unknown}, which tests/test_readme.py has no local stand-in for: add it to paths() "
            "or put <!-- readme-test: skip (reason) --> before the block"
        )
    code = re.sub(r"""device=(["'])cuda(:\d+)?\1""", 'device="cpu"', code)
    code = re.sub(r"""\.to\((["'])cuda(:\d+)?\1\)""", '.to("cpu")', code)
    return code.replace(".cuda()", ".cpu()")


def shell_commands(code: str) -> list[str]:
    """The ``xlmrxl`` command lines of a shell block (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", code)
    cmds = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if re.search(r"(^|\|\s*)xlmrxl\s", line):
            cmds.append(line)
    return cmds


def cli_line(line: str, d: Path, ckpts: dict) -> str:
    line = substitute(line, d, ckpts)
    line = re.sub(r"\[(--[^\]]+)\]", r"\1", line)  # [--json] -> --json: the optional form runs too
    line = re.sub(r"(--model\s+)DIR\b", rf"\g<1>{shlex.quote(str(ckpts['mlm']))}", line)
    line = re.sub(r"\bxlmrxl demo\b(?!\s+--quick)", "xlmrxl demo --quick --repeats 2", line)
    return line


@pytest.mark.parametrize("line,lang,code,skip", BLOCKS, ids=[f"README.md:{b[0]}-{b[1]}" for b in BLOCKS])
def test_readme_block(line, lang, code, skip, workspace, monkeypatch, tmp_path):
    if skip is not None:
        pytest.skip(f"README.md:{line} is marked: {skip}")
    d, ckpts = workspace
    if lang == "python":
        monkeypatch.chdir(d)
        source = substitute(code, d, ckpts)
        exec(compile(source, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
        return
    commands = shell_commands(code)
    if not commands:
        pytest.skip(f"README.md:{line}: no xlmrxl command in this shell block (set-up commands are not run)")
    env = {
        **os.environ,
        "PATH": f"{d / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "XLMRXL_CACHE": str(tmp_path / "cache"),
    }
    for cmd in commands:
        run = cli_line(cmd, d, ckpts)
        r = subprocess.run(["bash", "-c", run], cwd=d, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT)
        assert r.returncode == 0, f"README.md:{line}: `{cmd}` failed (rc {r.returncode}):\n{r.stderr[-3000:]}"


def test_markers_are_found():
    """Marked blocks are reported (skipped with their reason), never silently dropped."""
    marked = [b for b in BLOCKS if b[3] is not None]
    assert marked, "README.md has readme-test markers (Ray, COMET) and this test should see them"
    assert all(b[3].strip() for b in marked)
