"""The management protocol's grammar: ``KEYWORD [KEYWORD...] [NAME=value...]``.

Keywords are case-insensitive (returned upper-case); parameter names too; values keep
their case.  A value with spaces is written in double quotes, inside which ``\\"`` and
``\\\\`` stand for a quote and a backslash (``PIPE="/usr/bin/program -d -j"``).

Attack surface: every management line; bounded by the session's line limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ParseError(ValueError):
    """A line that does not follow the grammar; the text says where."""


@dataclass
class Command:
    words: list[str] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)

    @property
    def verb(self) -> str:
        return self.words[0] if self.words else ""


def _tokens(line: str) -> list[tuple[str, int, bool]]:
    """Split on blanks; returns (token, index of its first unquoted ``=`` or -1, quoted)."""
    tokens: list[tuple[str, int, bool]] = []
    index, length = 0, len(line)
    while index < length:
        while index < length and line[index] in " \t":
            index += 1
        if index >= length:
            break
        out: list[str] = []
        quoted = False
        equals = -1
        while index < length and line[index] not in " \t":
            char = line[index]
            if char == '"':
                quoted = True
                index += 1
                while True:
                    if index >= length:
                        raise ParseError("unterminated quoted value")
                    char = line[index]
                    if char == "\\" and index + 1 < length and line[index + 1] in '"\\':
                        out.append(line[index + 1])
                        index += 2
                    elif char == '"':
                        index += 1
                        break
                    else:
                        out.append(char)
                        index += 1
            else:
                if char == "=" and equals < 0 and not quoted:
                    equals = len(out)
                out.append(char)
                index += 1
        tokens.append(("".join(out), equals, quoted))
    return tokens


def parse(line: str) -> Command:
    if any(ord(ch) < 32 and ch != "\t" for ch in line):
        raise ParseError("control characters are not allowed")
    command = Command()
    for token, equals, quoted in _tokens(line):
        if equals >= 0:
            name, value = token[:equals], token[equals + 1:]
            if not name.isidentifier():
                raise ParseError(f"bad parameter name {name[:40]!r}")
            key = name.upper()
            if key in command.params:
                raise ParseError(f"parameter {key} given twice")
            command.params[key] = value
        elif command.params:
            raise ParseError(f"unexpected word {token[:40]!r} after parameters")
        elif quoted or not token:
            raise ParseError(f"unexpected quoted word {token[:40]!r}")
        else:
            command.words.append(token.upper())
    return command


def unquote(text: str) -> str:
    """One value as a client may write it: bare, or in double quotes with escapes."""
    if not text.startswith('"'):
        return text
    tokens = _tokens(text)
    if len(tokens) != 1:
        raise ParseError("expected a single quoted value")
    return tokens[0][0]
