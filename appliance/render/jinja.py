"""The one jinja2 environment of the renderers: templates ship in the package, StrictUndefined.

jinja2 is imported when the first template is used, not with this module: the drivers import the
renderers for their paths on every apply, most of which render no template.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jinja2

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


@cache
def environment() -> jinja2.Environment:
    import jinja2

    # auto_reload off: once loaded, rendering never touches the filesystem again.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
        autoescape=False,
    )


@cache
def template(name: str) -> jinja2.Template:
    """A template by the name of the file it produces, e.g. 'keepalived.conf.j2'."""
    return environment().get_template(name)
