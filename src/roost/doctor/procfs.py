"""Read /proc files under a configurable root, failing with a reason instead of a crash.

Rules:
- Every reader takes a path relative to the root ("sys/fs/file-max", not "/proc/sys/...") so
  tests can point the root at a fixture directory holding the real layout of /proc files.
- Every failure (missing file, a directory where a file belongs, permission denied, content
  that does not parse) raises `ProcError` whose `reason` says which file and what was wrong.
  Callers turn it into an "unknown" verdict; nothing here lets an OSError or ValueError escape.
- Values are returned as the kernel writes them: no unit conversion except where the reader
  says so (`meminfo` returns bytes, because every meminfo value with a unit is in kB).
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_ROOT = "/proc"


class ProcError(Exception):
    """A /proc entry could not be read or parsed; `reason` is meant for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Proc:
    """A /proc tree, real or a fixture copy."""

    __slots__ = ("root",)

    def __init__(self, root: str | Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def text(self, rel: str) -> str:
        path = self.path(rel)
        try:
            return path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            raise ProcError(f"{path} does not exist") from None
        except IsADirectoryError:
            raise ProcError(f"{path} is a directory, not a file") from None
        except PermissionError:
            raise ProcError(f"{path}: permission denied") from None
        except OSError as exc:
            raise ProcError(f"{path}: {exc.strerror or exc}") from None

    def ints(self, rel: str, count: int | None = None) -> list[int]:
        """Whitespace-separated integers; the kernel separates multi-value sysctls with tabs."""
        text = self.text(rel)
        try:
            values = [int(word) for word in text.split()]
        except ValueError:
            raise ProcError(f"{self.path(rel)}: expected integers, found {text[:40]!r}") from None
        if not values or (count is not None and len(values) != count):
            want = f"{count} integers" if count is not None else "an integer"
            raise ProcError(f"{self.path(rel)}: expected {want}, found {text[:40]!r}")
        return values

    def integer(self, rel: str) -> int:
        return self.ints(rel, 1)[0]

    def meminfo(self) -> dict[str, int]:
        """/proc/meminfo as bytes ("Slab:  118996 kB" -> {"Slab": 121851904})."""
        rel = "meminfo"
        out: dict[str, int] = {}
        for line in self.text(rel).splitlines():
            key, sep, rest = line.partition(":")
            words = rest.split()
            if not sep or not words:
                continue
            try:
                value = int(words[0])
            except ValueError:
                continue
            out[key.strip()] = value * 1024 if words[1:] == ["kB"] else value
        if "MemTotal" not in out:
            raise ProcError(f"{self.path(rel)}: no MemTotal line")
        return out

    def sockstat(self) -> dict[str, dict[str, int]]:
        """/proc/net/sockstat: "TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 83" -> {"TCP": {...}}.

        `mem` is in pages: the memory charged to TCP for queued data, the figure tcp_mem caps.
        """
        rel = "net/sockstat"
        out: dict[str, dict[str, int]] = {}
        for line in self.text(rel).splitlines():
            proto, sep, rest = line.partition(":")
            words = rest.split()
            if not sep or len(words) % 2:
                continue
            try:
                out[proto.strip()] = {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}
            except ValueError:
                continue
        if "TCP" not in out:
            raise ProcError(f"{self.path(rel)}: no TCP line")
        return out

    def slabinfo(self) -> dict[str, tuple[int, int, int, int, int]]:
        """/proc/slabinfo (root only): name -> (active_objs, num_objs, objsize in bytes,
        objperslab, pagesperslab)."""
        rel = "slabinfo"
        out: dict[str, tuple[int, int, int, int, int]] = {}
        lines = self.text(rel).splitlines()
        if not lines or not lines[0].startswith("slabinfo - version: 2"):
            raise ProcError(f"{self.path(rel)}: not slabinfo version 2")
        for line in lines[1:]:
            if line.startswith("#"):
                continue
            words = line.split()
            try:
                active, total, size, per_slab, pages = (int(w) for w in words[1:6])
            except ValueError:
                continue  # fewer than five numbers, or not numbers
            out[words[0]] = (active, total, size, per_slab, pages)
        return out

    def status_caps(self, key: str = "CapEff") -> int:
        """The capability mask of this process from self/status, as an int."""
        rel = "self/status"
        for line in self.text(rel).splitlines():
            name, _, value = line.partition(":")
            if name == key:
                try:
                    return int(value.strip(), 16)
                except ValueError:
                    break
        raise ProcError(f"{self.path(rel)}: no valid {key} line")

    def softnet_dropped(self) -> int:
        """Packets dropped because a CPU's input backlog was full (column 2 of softnet_stat)."""
        rel = "net/softnet_stat"
        total = 0
        lines = self.text(rel).split("\n")
        try:
            for line in lines:
                words = line.split()
                if words:
                    total += int(words[1], 16)
        except (IndexError, ValueError):
            raise ProcError(f"{self.path(rel)}: unexpected content {lines[0][:40]!r}") from None
        return total
