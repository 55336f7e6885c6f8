"""The README stays true of the tree: every file it names exists, the Layout lists every module,
the reading path's functions exist, and every command line it shows uses options the command
has."""
import contextlib
import glob
import importlib
import io
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
TOP = ("minigrad/", "alexnet/", "tests/", "bench/", "docs/", ".ci/")


def section(title):
    """The text of the README's section `## title`, up to the next one."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def layout():
    """{path: description} of the Layout section's tree, one entry per file or folder named
    (`nn.py, optim.py` names two; an indented name is in the folder above it)."""
    block = section("Layout").split("```")[1]
    entries, folder = {}, ""
    for line in block.splitlines():
        if not line.strip() or line.startswith(" " * 10):       # a description's next line
            continue
        names, _, description = line.strip().partition("  ")
        if not line.startswith(" "):
            folder = names if names.endswith("/") else ""
            entries[names] = description.strip()
            continue
        for name in names.split(", "):
            entries[folder + name] = description.strip()
    return entries


def test_every_path_the_readme_names_exists():
    named = set(re.findall(r"`([^`\s]+)`", README)) | set(re.findall(r"\]\(([^)\s]+)\)", README))
    paths = {name for name in named if name.startswith(TOP)} | set(layout())
    missing = [path for path in sorted(paths) if not glob.glob(os.path.join(ROOT, path))]
    assert not missing, f"the README names {missing}, which the tree does not have"


def test_the_layout_lists_every_module_and_benchmark():
    listed = set(layout())
    modules = [os.path.relpath(path, ROOT) for folder in ("minigrad", "alexnet")
               for path in glob.glob(os.path.join(ROOT, folder, "*.py"))
               if not path.endswith("__init__.py")]
    assert sorted(set(modules) - listed) == []
    bench = section("Layout").split("bench/", 1)[1].split("docs/", 1)[0]     # its description
    unnamed = [name for name in sorted(os.listdir(os.path.join(ROOT, "bench")))
               if os.path.isfile(os.path.join(ROOT, "bench", name)) and name not in bench]
    assert unnamed == []


def test_the_functions_of_the_reading_path_exist():
    """`get_array_module`, `Run.train_step`, `Alone`, ...: each defined in the code."""
    reading = section("Reading the code")
    names = [name for name in re.findall(r"`([A-Za-z_][\w.]*)`", reading)
             if not name.endswith((".py", ".cu", ".md", ".h")) and name != "mpiexec"]
    sources = "".join(open(path, encoding="utf-8").read() for path in
                      glob.glob(os.path.join(ROOT, "minigrad", "*.py")) +
                      glob.glob(os.path.join(ROOT, "alexnet", "*.py")) + [__file__.replace(
                          "test_readme.py", "conftest.py")])
    assert len(names) >= 12
    undefined = [name for name in names
                 if not re.search(rf"^\s*(def|class) {re.escape(name.split('.')[-1])}\b",
                                  sources, re.MULTILINE)]
    assert undefined == []


def help_text(command):
    """What `python -m alexnet.<command> --help` prints."""
    module = importlib.import_module(f"alexnet.{command}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        (getattr(module, "parse_args", None) or module.main)(["--help"])
    return out.getvalue()


def command_lines():
    """(command, options) of every `python -m alexnet.<command> ...` line in the README's code
    blocks, continued lines joined, comments left out."""
    blocks = "\n".join(README.split("```")[1::2]).replace("\\\n", " ")
    for line in blocks.splitlines():
        found = re.search(r"python -m alexnet\.(\w+)(.*)", line.split("  #")[0])
        if found:
            yield found.group(1), re.findall(r"(?<!\S)(--[a-z][\w-]*)", found.group(2))


def test_every_command_line_in_the_readme_uses_options_its_command_has():
    lines = list(command_lines())
    assert len(lines) >= 15
    helps = {command: help_text(command) for command in {command for command, _ in lines}}
    unknown = [(command, option) for command, options in lines for option in options
               if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", helps[command])]
    assert unknown == []
