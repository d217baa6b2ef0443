"""A mkdocs hook: the reference pages, generated from the live code at every build so they cannot drift.

- `reference/cli.md`: every command and flag of `python -m sweeper`, walked from the argparse parser
  that `sweeper.cli._parser()` builds (the parser `main` uses), with each action's help, default
  and metavar as argparse holds them.
- `reference/config.md`: every field of the dataclasses a search-space file writes (`Sweep` and its
  options in `sweeper/definition/`) and of the trial configs (`trainables.config`,
  `trainables.classifier.config`), with its type, default and documentation.

Decisions:
- A mkdocs hook rather than the mkdocs-gen-files plugin: the two pages need no more than mkdocs'
  own `on_files` event and `File.generated`, so the docs build adds no dependency (mkdocs-gen-files
  0.6 also pulls in a second copy of mkdocs, `properdocs`).
- Fields are documented by comments in the source, not docstrings (Python has no field docstrings),
  so their documentation is read from the source with `ast` (where each field is) and `tokenize`
  (the comments): the comment on the field's own line(s), and the comment lines directly above it.
  A single comment line above a field that starts with a lower-case letter (`# data`,
  `# budget: one eval period = ...`) is a group heading in the class, shown as a row of its own;
  any other comment above a field (capitalised, or several lines) documents that field. Class and
  module docstrings are shown as they are.
- Types are the annotations as written (the modules use `from __future__ import annotations`, so
  `dataclasses.fields` holds them as text); defaults are the live values' `repr`.
- Only `sweeper.cli` and the definition/config modules are imported: none of them imports Ray, MLflow
  or torch (pyproject.toml's import contracts keep it so), so the build takes seconds.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib
import inspect
import io
import textwrap
import tokenize

# The modules whose dataclasses a user writes: the Sweep and its options, then the trial configs.
CONFIG_MODULES = ("sweeper.definition.sweep", "sweeper.definition.options", "sweeper.definition.budget",
                  "trainables.config", "trainables.classifier.config")
CLI_PAGE = "reference/cli.md"
CONFIG_PAGE = "reference/config.md"


def on_files(files, config):
    """mkdocs' event after the docs folder is read: add the two generated pages."""
    from mkdocs.structure.files import File

    for path, text in generated_pages().items():
        files.append(File.generated(config, path, content=text))
    return files


def generated_pages() -> dict[str, str]:
    """Page path in the site -> its Markdown."""
    from sweeper.cli import _parser

    return {CLI_PAGE: cli_markdown(_parser()), CONFIG_PAGE: config_markdown(config_classes())}


# --- the command line ---------------------------------------------------------------------------

def cli_markdown(parser: argparse.ArgumentParser) -> str:
    lines = ["# Command-line reference", "",
             "Generated from the argparse parser of `sweeper/cli.py` when the site is built; "
             "`python -m sweeper COMMAND --help` prints the same (every command also takes `-h`, `--help`).", "",
             "```", _usage(parser), "```", ""]
    for path, command, help_text in commands(parser):
        lines += _command_markdown(path, command, help_text)
    return "\n".join(lines)


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(("data", "prepare"), its parser, its help) for every command that takes no further command,
    in the order `--help` lists them. argparse has no public way to list its sub-parsers, so this
    reads `_actions` and `_choices_actions`, as argparse's own help formatter does."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if _subparsers(sub):
                    yield from commands(sub, (*path, name))
                else:
                    yield (*path, name), sub, helps.get(name) or ""


def _subparsers(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(action, argparse._SubParsersAction) for action in parser._actions)


def _usage(parser: argparse.ArgumentParser) -> str:
    # A fixed width, so the page does not depend on the terminal that builds it.
    parser.formatter_class = functools.partial(argparse.HelpFormatter, width=100)
    return parser.format_usage().strip()


def _command_markdown(path: tuple[str, ...], parser: argparse.ArgumentParser, help_text: str) -> list[str]:
    lines = [f"## `{' '.join(path)}`", "", _sentence(help_text), "", "```", _usage(parser), "```", ""]
    arguments = [action for action in parser._actions if not isinstance(action, argparse._HelpAction)]
    if arguments:
        lines += ["| argument | what | default |", "|---|---|---|"]
        lines += [f"| {_argument(action)} | {_cell(action.help or '')} | {_default(action)} |" for action in arguments]
        lines.append("")
    return lines


def _argument(action: argparse.Action) -> str:
    # The names argparse's own usage line gives: the dest of a positional, DEST of an option.
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`" + ("" if action.required else " (optional)")
    flags = ", ".join(f"`{flag}`" for flag in action.option_strings)
    if action.nargs == 0:  # a switch: store_true and the like
        return flags
    value = action.metavar or action.dest.upper()
    repeat = " (repeatable)" if isinstance(action, argparse._AppendAction) else ""
    return f"{flags} `{value}`" + (" (required)" if action.required else "") + repeat


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, [], argparse.SUPPRESS):
        return ""
    return f"`{action.default!r}`"


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")) if text else ""


def _cell(text: str) -> str:
    """Text inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


# --- the configuration --------------------------------------------------------------------------

def config_classes() -> list[type]:
    """The public dataclasses (and the `Config` base) each of CONFIG_MODULES defines, in source order."""
    classes = []
    for module in map(importlib.import_module, CONFIG_MODULES):
        own = [obj for name, obj in vars(module).items()
               if inspect.isclass(obj) and obj.__module__ == module.__name__ and not name.startswith("_")
               and (dataclasses.is_dataclass(obj) or name == "Config")]
        classes += sorted(own, key=lambda cls: inspect.getsourcelines(cls)[1])
    return classes


def config_markdown(classes: list[type]) -> str:
    lines = ["# Configuration reference", "",
             "Generated from the code when the site is built: every field of `Sweep`, its options and "
             "the trial configs, with its type (as annotated), its default and the comment beside or "
             "above it in the source. A row in *italics* is a comment that heads a group of fields.", ""]
    module = None
    for cls in classes:
        if cls.__module__ != module:
            module = cls.__module__
            lines += [f"## `{module}`", "", *_docstring(importlib.import_module(module)), ""]
        lines += _class_markdown(cls)
    return "\n".join(lines)


def _class_markdown(cls: type) -> list[str]:
    lines = [f"### `{cls.__name__}`", ""]
    doc = _docstring(cls)
    lines += [*doc, ""] if doc else []
    prepared = getattr(cls, "PREPARED_KEYS", ())
    if prepared:
        lines += [f"Prepared once per sweep, so never searched: {', '.join(f'`{k}`' for k in prepared)}.", ""]
    if not dataclasses.is_dataclass(cls):
        return lines
    headings, docs = field_comments(cls)
    lines += ["| field | type | default | what |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name in headings:
            lines.append(f"| *{_cell(headings[f.name])}* | | | |")
        lines.append(f"| `{f.name}` | {_cell(str(f.type))} | {_field_default(f)} | {_cell(docs.get(f.name, ''))} |")
    lines.append("")
    return lines


def _field_default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    return f"`{_cell(repr(value))}`"


def _docstring(obj) -> list[str]:
    """Its own docstring as paragraphs; none for a dataclass without one (whose __doc__ is the
    signature dataclasses writes)."""
    doc = obj.__dict__.get("__doc__")
    return [inspect.cleandoc(doc)] if doc and not doc.startswith(f"{getattr(obj, '__name__', '')}(") else []


def field_comments(cls: type) -> tuple[dict[str, str], dict[str, str]]:
    """({field: the group heading above it}, {field: its documentation}) from the class's source
    comments (the rule: the module docstring)."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline)
                if token.type == tokenize.COMMENT}
    rows = source.splitlines()
    headings, docs = {}, {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        above = []
        row = node.lineno - 1  # 1-based rows: the row above the field
        while row >= 1 and rows[row - 1].lstrip().startswith("#"):
            above.insert(0, comments[row])
            row -= 1
        beside = [comments[r] for r in range(node.lineno, node.end_lineno + 1) if r in comments]
        if len(above) == 1 and above[0][:1].islower():
            headings[name], above = above[0], []
        docs[name] = " ".join(above + beside)
    return headings, docs
