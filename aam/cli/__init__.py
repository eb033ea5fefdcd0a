"""The `aam` command line: one module per command, each thin (parse -> config -> library call)."""

import sys

import typer

from aam.cli._app import app
from aam.errors import AamUserError

# Importing a command module registers its command on `app`.
from aam.cli import baseline, convert, ensemble, export, pool, predict, report, runs, train, tune  # noqa: E402,F401


def main() -> None:
    """Entry point: a user mistake is one line on stderr and exit code 2, never a traceback."""
    from aam._files import exit_on_sigterm

    exit_on_sigterm()  # a terminated command still removes its work folders and restores what it set aside
    try:
        code = app(standalone_mode=False)
    except AamUserError as e:
        print(f"aam: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        print("aam: aborted", file=sys.stderr)
        sys.exit(1)
    except typer.TyperException as e:  # typer's own click: usage errors (missing or bad options)
        if hasattr(e, "show"):
            e.show()
        else:
            print(f"aam: error: {e}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2) or 2)
    except KeyboardInterrupt:
        print("aam: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
