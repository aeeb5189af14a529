"""``metrics.csv``: one row per evaluation, repaired on resume when a crash tore it."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from toolbox.errors import UserError
from toolbox.records.atomic import write_text
from toolbox.records.lock import move_aside


class MetricsTable:
    """``metrics.csv``: one row per evaluation, appended (a resumed run adds to it)."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns

    @staticmethod
    def read(path: Path) -> tuple[list[str] | None, list[list[str]], bytes, list[str]]:
        """What ``path`` holds: its header (None without a usable one), the rows that read
        whole, its last line if an append killed midway left it without its newline (else
        b""), and what is wrong with each other line that does not read."""
        lines = path.read_bytes().split(b"\n")
        torn = lines.pop()  # b"" after the newline that ends every complete line
        header: list[str] | None = None
        rows: list[list[str]] = []
        damaged: list[str] = []
        for number, line in enumerate(lines, 1):
            try:
                text = line.decode("utf-8", "replace").removesuffix("\r")
                if "\0" in text or "\ufffd" in text:
                    raise ValueError("binary bytes, not text")
                fields = next(csv.reader([text]), [])
                if header is None:
                    if number > 1:
                        raise ValueError("no header to read it by")
                    if "step" not in fields or "" in fields or len(set(fields)) < len(fields):
                        raise ValueError(f"{text[:60]!r} is no header of column names")
                    header = fields
                    continue
                if len(fields) != len(header):
                    raise ValueError(f"{len(fields)} values where the header has {len(header)}")
                int(fields[header.index("step")])
                for value in fields:
                    if value:
                        float(value)  # every column is a number: anything else is garbage
            except (ValueError, csv.Error) as error:
                damaged.append(f"line {number}: {str(error)[:80]}")
                continue
            rows.append(fields)
        return header, rows, torn, damaged

    def drop_rows_after(self, step: int) -> None:
        """Remove rows logged after ``step`` (a resumed run is about to log them again) and
        the lines an interrupted or damaged write left unreadable, saying so in the log: new
        rows must never be glued onto half a row."""
        try:
            self._repair(step)
        except OSError as error:
            raise UserError(
                f"cannot repair {self.path} ({error}); free space or fix its permissions, then "
                "resume again."
            ) from error

    def _repair(self, step: int) -> None:
        if not self.path.exists():
            return
        header, rows, torn, damaged = self.read(self.path)
        kept = [row for row in rows if header and int(row[header.index("step")]) <= step]
        if len(kept) == len(rows) and not torn and not damaged:
            return
        logger = logging.getLogger("toolbox")
        if torn:
            # A killed append: that evaluation came after the checkpoint (which is written
            # after it), so the resumed run logs it again and dropping it loses nothing.
            logger.warning(
                "%s: dropped its last line %r, cut short by an interrupted write",
                self.path,
                torn[:60].decode("utf-8", "replace"),
            )
        if damaged:
            # Repaired, not refused: the table is a log of evaluations and the run's state is
            # in its checkpoint, so refusing would stop a sound run over a log the user could
            # only set aside by hand. Doing that here and keeping the readable rows loses
            # nothing: the original stays beside it.
            aside = move_aside(self.path, "damaged")
            unlisted = len(damaged) - 3
            shown = "; ".join(damaged[:3]) + (f"; {unlisted} more such" if unlisted > 0 else "")
            logger.warning(
                "%s was damaged (%s); kept it as %s and rewrote it with its %d readable rows",
                self.path,
                shown,
                aside.name,
                len(kept),
            )
        table = io.StringIO()
        if header is not None:  # without one, append starts the table afresh
            csv.writer(table).writerows([header, *kept])
        write_text(self.path, table.getvalue())

    def append(self, row: dict) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.columns)
            if new:
                writer.writeheader()
            writer.writerow(row)
