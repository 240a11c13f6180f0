"""The errors the project reports in its own words, and how a command reports them.

The library raises them; only a command (`run_command`) turns one into a line
`error: <message>` on standard error and an exit status, so that the library's callers
(tests, other tools) can catch them. Standard library only: every process imports it.
"""
import sys


class FcnError(Exception):
    """A failure whose message names the file or value and says what to do; a command
    exits with `exit_status`."""
    exit_status = 1


class UsageError(FcnError):
    """A problem the user can fix: a file, a value, a setting (exit status 2, as for a bad
    command line)."""
    exit_status = 2


def exit_with(error):
    """End the process for an FcnError: `error: <message>` on standard error, its status."""
    print(f'error: {error}', file=sys.stderr, flush=True)
    sys.exit(error.exit_status)


def run_command(main):
    """Run a command's `main()` and exit with its status (None: 0); an FcnError ends it
    as `exit_with` says, without a traceback."""
    try:
        status = main()
    except FcnError as error:
        exit_with(error)
    sys.exit(status)
