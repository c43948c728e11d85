"""The ``cxrdask`` command's exit statuses, listed once: the commands return them, and the
package's docstring and every ``--help`` print this table."""

from __future__ import annotations

from cxrdask.runtime.interrupt import EXIT_INTERRUPTED

EXIT_DONE = 0
EXIT_REFUSED = 2
EXIT_TOO_MANY_FAILED = 3
EXIT_DAMAGED = 4
EXIT_RETRIABLE = 5
EXIT_BROKEN_PIPE = 141  # what a shell reports for a command whose reader went away (128 + SIGPIPE)

EXIT_CODES: dict[int, str] = {
    EXIT_DONE: "done",
    EXIT_REFUSED: "refused before any work (bad input: a CSV row, a missing images folder, "
                  "weights that cannot be had, a store made otherwise; nothing written)",
    EXIT_TOO_MANY_FAILED: "an extraction ran, but more rows failed than --max-failed-fraction "
                          "allows, or all of them (with --strict: any row); what was written is kept",
    EXIT_DAMAGED: "verify found corrupt or missing chunks",
    EXIT_RETRIABLE: "an extraction ran, but storage failures left images to read again: run "
                    "it again",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C): finished chunks are kept; run the same command to "
                      "resume",
    EXIT_BROKEN_PIPE: "the output's reader closed early (`cxrdask info STORE | head`)",
}


def exit_codes_text(width: int = 88) -> str:
    """The table as ``--help`` shows it (and the package's docstring): one status a line,
    its meaning wrapped beside it."""
    import textwrap

    lines = ["exit status:"]
    for code, meaning in EXIT_CODES.items():
        wrapped = textwrap.wrap(meaning, width - 6)
        lines.append(f"{code:>3}  {wrapped[0]}")
        lines += [f"     {more}" for more in wrapped[1:]]
    lines += ["", "A run that seems stuck: `kill -USR1 PID` prints where each of its threads is "
                  "to stderr,", "and it goes on; the Dask dashboard's /info page shows the "
                  "workers' tasks."]
    return "\n".join(lines)


__all__ = ["EXIT_BROKEN_PIPE", "EXIT_CODES", "EXIT_DAMAGED", "EXIT_DONE", "EXIT_INTERRUPTED",
           "EXIT_REFUSED", "EXIT_RETRIABLE", "EXIT_TOO_MANY_FAILED", "exit_codes_text"]
