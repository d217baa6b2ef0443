"""The documentation: the README stays a front door with CI's own commands, the generated reference
holds every flag of the live parser and every config field, and every relative link of the README
and of docs/ leads to a file and heading that exist; then the real `mkdocs build --strict`.

Fast (seconds): it imports sweeper.cli and the config modules, nothing that starts Ray or torch.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250


def _hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", DOCS / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    """The generated pages, by path under docs/ ("reference/cli.md")."""
    return _hook().generated_pages()


def _sections(markdown: str, level: str) -> dict[str, str]:
    """Heading text (backticks dropped) -> the text up to the next heading of that level."""
    parts = re.split(rf"^{level} (.+)$", markdown, flags=re.M)
    return {title.replace("`", ""): body for title, body in zip(parts[1::2], parts[2::2])}


# --- the reference covers the live code --------------------------------------------------------

def _live_arguments(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, action) for every argument of every command, walked here on its own."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _live_arguments(sub, (*path, name))
        elif path and not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_command_and_flag_of_the_live_parser_is_in_the_cli_reference(generated):
    from sweeper.cli import _parser

    commands = _sections(generated["reference/cli.md"], "##")
    arguments = list(_live_arguments(_parser()))
    assert len(arguments) >= 20, "the parser walk found too few arguments to be the real CLI"
    for path, action in arguments:
        command = " ".join(path)
        assert command in commands, f"command {command!r} has no section in reference/cli.md"
        names = action.option_strings or [action.metavar or action.dest]
        for name in names:
            assert f"`{name}`" in commands[command], f"{command} {name}: not in reference/cli.md"
        if action.help:
            assert " ".join(action.help.split()).replace("|", "\\|") in commands[command], f"{command} {names}: help"


def _config_classes() -> list[type]:
    """What a user configures, found here independently of the hook: the dataclasses `sweeper`
    exports for search-space files, and every trial config deriving from trainables' Config."""
    import sweeper
    import trainables.classifier.config  # noqa: F401  (defines ClassifierConfig, a Config subclass)
    from trainables.config import Config

    exported = [obj for obj in (getattr(sweeper, name) for name in sweeper.__all__)
                if isinstance(obj, type) and dataclasses.is_dataclass(obj)]
    configs = [cls for cls in Config.__subclasses__() if cls.__module__.startswith("trainables.")]
    return exported + configs


def _source_inline_comments(cls: type) -> dict[str, str]:
    """field -> the comment on its own line, read with a plain regex over the source file (the hook
    reads it with ast and tokenize): `    name: type = default  # comment`."""
    import inspect

    comments = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+(\w+): [^#=]+(?:=[^#]*)?#\s*(.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def test_every_config_field_is_in_the_config_reference_with_its_type_default_and_comment(generated):
    classes = _sections(generated["reference/config.md"], "###")
    found = _config_classes()
    assert {"Sweep", "TPE", "Promotion", "ASHA", "Resources", "FinalEval", "Quick", "Budget", "GANConfig",
            "ClassifierConfig"} <= {cls.__name__ for cls in found}
    for cls in found:
        assert cls.__name__ in classes, f"{cls.__name__}: no section in reference/config.md"
        rows = _rows(classes[cls.__name__])
        inline = _source_inline_comments(cls)
        for f in dataclasses.fields(cls):
            row = rows.get(f"`{f.name}`")
            assert row, f"{cls.__name__}.{f.name}: no row in reference/config.md"
            assert str(f.type).replace("|", "\\|") in row, f"{cls.__name__}.{f.name}: type {f.type} not in {row}"
            if f.default is not dataclasses.MISSING:
                assert f"`{f.default!r}`".replace("|", "\\|") in row, f"{cls.__name__}.{f.name}: default"
            if f.name in inline:
                assert inline[f.name] in row, f"{cls.__name__}.{f.name}: its comment {inline[f.name]!r} not in {row}"
    # A field documented only by the comment lines above it (the hook's other source of docs).
    assert "Capture the whole train step as one CUDA graph" in _rows(classes["GANConfig"])["`cuda_graph`"]


def _rows(section: str) -> dict[str, str]:
    """"`field`" -> its table row."""
    return {row.split("|")[1].strip(): row for row in section.splitlines() if row.startswith("| `")}


# --- the README ----------------------------------------------------------------------------------

def _ci_command(prefix: str) -> str:
    """The command of the line of .ci/run that starts with `prefix`, without its comment."""
    lines = [line.split("#")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line.startswith(prefix)]
    assert len(lines) == 1, f".ci/run: expected one line starting {prefix!r}, found {lines}"
    return lines[0]


def test_the_readme_is_a_front_door_with_ci_s_own_install_and_test_commands():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"
    for command in (_ci_command("pip install"), _ci_command("python -m pytest")):
        assert command in lines, f"README.md: no line that is exactly CI's command {command!r}"
    assert _ci_command("mkdocs build") == "mkdocs build --strict"
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    first_block = re.search(r"```\n(.*?)```", quick_start, re.S).group(1).splitlines()
    assert first_block[0] == 'pip install -e ".[test]"'
    assert first_block[1].startswith("python -m sweeper run search_spaces/wgangp.py")


# --- links ---------------------------------------------------------------------------------------

def _github_slug(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped (but - and _), spaces to hyphens."""
    text = title.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text, flags=re.UNICODE).replace(" ", "-")


def _mkdocs_slug(title: str) -> str:
    from markdown.extensions.toc import slugify  # what mkdocs' toc uses

    return slugify(title.replace("`", ""), "-")


def _without_code(markdown: str) -> str:
    markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", markdown)


def _headings(markdown: str) -> list[str]:
    return re.findall(r"^#{1,6} (.+?)\s*$", _without_code_blocks(markdown), flags=re.M)


def _without_code_blocks(markdown: str) -> str:
    return re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)


def _links(markdown: str) -> list[str]:
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", _without_code(markdown))


def _documents() -> list[Path]:
    return [README, *sorted(p for p in DOCS.rglob("*.md"))]


def _broken_links(generated: dict[str, str], documents: list[Path]) -> list[str]:
    virtual = {DOCS / path: text for path, text in generated.items()}
    broken = []
    for document in documents:
        slugs = [_github_slug] if document == README else [_github_slug, _mkdocs_slug]
        for link in _links(document.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", link):  # http:, mailto: ...: not checked here
                continue
            path, _, anchor = link.partition("#")
            target = (document.parent / path).resolve() if path else document
            if target in virtual:
                text = virtual[target]
                slugs = [_mkdocs_slug]  # a page of the built site only
            elif target.exists():
                text = target.read_text() if target.suffix == ".md" else ""
            else:
                broken.append(f"{document.name}: {link} (no file {path})")
                continue
            if anchor and target.suffix == ".md":
                for slug in slugs:
                    if anchor not in {slug(title) for title in _headings(text)}:
                        broken.append(f"{document.name}: {link} (no heading #{anchor}, {slug.__name__})")
    return broken


def test_every_relative_link_of_the_readme_and_the_docs_leads_to_a_file_and_heading(generated):
    assert _links(README.read_text()), "README.md links into docs/"
    assert _broken_links(generated, _documents()) == []


def test_the_link_check_reports_a_missing_heading_and_a_missing_file(generated, tmp_path):
    fid = os.path.relpath(DOCS / "guide" / "fid.md", tmp_path)
    page = tmp_path / "probe.md"
    page.write_text(f"# Probe\n[a]({fid}#no-such-heading) [b](missing.md) [c](#probe) [d]({fid}#how-best-moves)\n")
    broken = _broken_links(generated, [page])
    # The missing heading once per anchor rule (GitHub's and mkdocs'), the missing file once.
    assert [b.split(" (")[1] for b in broken] == ["no heading #no-such-heading, _github_slug)",
                                                 "no heading #no-such-heading, _mkdocs_slug)",
                                                 "no file missing.md)"], broken
    assert not any("#probe" in b or "how-best-moves" in b for b in broken), broken


# --- the site builds -----------------------------------------------------------------------------

def test_mkdocs_build_strict_passes(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs tools come with the test extra: pip install -e '.[test]'")
    pytest.importorskip("material", reason="mkdocs-material comes with the test extra")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(["nice", "-n", "19", sys.executable, "-m", "mkdocs", "build", "--strict",
                             "--site-dir", str(tmp_path / "site")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for page in ("index.html", "reference/cli/index.html", "reference/config/index.html",
                 "guide/running/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    cli_page = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "--num-samples" in cli_page and "data prepare" in cli_page
