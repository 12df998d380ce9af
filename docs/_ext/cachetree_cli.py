"""Sphinx directive ``cachetree-cli``: the command-line reference, generated from the code.

The directive imports :func:`cachetree.cli.build_parser` while the docs are built and
renders, for the ``cachetree`` command and for each of its subcommands (in the order the
parser defines them):

* a section titled ``cachetree <subcommand>`` (linkable as ``cli.md#cachetree-<name>``),
* the subcommand's description,
* the exact ``--help`` text argparse prints, as a literal block.

So the reference cannot drift from the parser: a new option or subcommand appears on the
next build. Usage in a MyST page::

    ```{cachetree-cli}
    ```
"""

from __future__ import annotations

import argparse
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.application import Sphinx

HELP_WIDTH = 90  # fixed, so the page does not depend on the terminal of whoever builds it


def _fixed_width(parser: argparse.ArgumentParser) -> None:
    def formatter(prog: str) -> argparse.HelpFormatter:
        return argparse.HelpFormatter(prog, width=HELP_WIDTH, max_help_position=32)

    parser.formatter_class = formatter


def _subcommands(
    parser: argparse.ArgumentParser,
) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, one-line help, parser)`` of every subcommand, in definition order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _section(document: Any, title: str, anchor: str) -> nodes.section:
    section = nodes.section(ids=[anchor], names=[nodes.fully_normalize_name(title)])
    section += nodes.title(title, "", nodes.literal(title, title))
    document.note_implicit_target(section, section)
    return section


def _help_block(parser: argparse.ArgumentParser) -> nodes.literal_block:
    _fixed_width(parser)
    text = parser.format_help().rstrip()
    block = nodes.literal_block(text, text)
    block["language"] = "text"
    return block


class CachetreeCli(Directive):
    """Render the ``cachetree`` command and its subcommands from ``build_parser()``."""

    has_content = False
    required_arguments = 0
    optional_arguments = 0

    def run(self) -> list[nodes.Node]:
        from cachetree.cli import build_parser

        document = self.state.document
        parser = build_parser()
        subcommands = _subcommands(parser)
        result: list[nodes.Node] = []

        overview = nodes.bullet_list()
        for name, summary, _ in subcommands:
            ref = nodes.reference("", "", internal=True, refid=f"cachetree-{name}")
            ref += nodes.literal(f"cachetree {name}", f"cachetree {name}")
            item = nodes.paragraph("", "", ref, nodes.Text(f": {summary}" if summary else ""))
            overview += nodes.list_item("", item)
        result.append(overview)
        result.append(_help_block(parser))

        for name, summary, sub in subcommands:
            section = _section(document, f"cachetree {name}", f"cachetree-{name}")
            description = sub.description or summary
            if description:
                text = description[0].upper() + description[1:]
                section += nodes.paragraph(text, text if text.endswith(".") else text + ".")
            section += _help_block(sub)
            result.append(section)
        return result


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("cachetree-cli", CachetreeCli)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
