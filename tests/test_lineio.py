"""Message data as it arrives (RFC 5321 4.1.1.4, 4.5.2, 4.5.3.1.6): the end mark, dot
unstuffing and the text line limit, whatever pieces the data comes in."""

from __future__ import annotations

import random

import pytest

from extremail.net.lineio import (MAX_TEXT_LINE, DataLineTooLong, DataReader, DataTooBig,
                                  has_line_over)

MESSAGE = (b"Subject: dots\r\n\r\n..first stuffed\r\nplain\r\n...\r\n.x unstuffed\r\n"
           b"bare\n.\nlf dot\r\n\r\n..\r\n")
WANTED = (b"Subject: dots\r\n\r\n.first stuffed\r\nplain\r\n..\r\n.x unstuffed\r\n"
          b"bare\n.\nlf dot\r\n\r\n.\r\n")


def feed_in(pieces: list[bytes], max_size: int = 0) -> tuple[DataReader, bytearray]:
    reader, buf = DataReader(max_size), bytearray()
    for index, piece in enumerate(pieces):
        buf += piece
        if reader.feed(buf):
            assert index == len(pieces) - 1, "ended before the end mark arrived"
            return reader, buf
    raise AssertionError("the end mark was not found")


def test_every_cut_gives_the_same_message() -> None:
    data = MESSAGE + b".\r\nMAIL FROM:<next@x.test>\r\n"
    end = len(MESSAGE) + 3
    for first in range(1, end):
        for second in sorted({min(first + 1, end), min(first + 7, end), end}):
            pieces = [data[:first], data[first:second], data[second:end]]
            reader, buf = feed_in([piece for piece in pieces if piece])
            assert reader.result() == WANTED, (first, second)
            buf += data[end:]
            assert buf == b"MAIL FROM:<next@x.test>\r\n"  # pipelined behind the mark: kept


def test_one_byte_at_a_time() -> None:
    data = b"..a\r\n..\r\n.\r\n"
    reader, _ = feed_in([data[i:i + 1] for i in range(len(data))])
    assert reader.result() == b".a\r\n.\r\n"


@pytest.mark.parametrize("data, body", [(b".\r\n", b""), (b"\r\n.\r\n", b"\r\n"),
                                        (b"a\r\n.\r\n", b"a\r\n")])
def test_empty_and_short(data: bytes, body: bytes) -> None:
    reader, buf = feed_in([data])
    assert reader.result() == body and buf == b""


def test_a_bare_lf_dot_never_ends_the_data() -> None:
    reader, buf = DataReader(0), bytearray(b"a\n.\nb\r.\rc\r\n.\n")
    assert not reader.feed(buf)
    buf += b"\r\n.\r\n"
    assert reader.feed(buf) and reader.result() == b"a\n.\nb\r.\rc\r\n.\n\r\n"


def test_too_big_is_read_to_its_end() -> None:
    line = b"y" * 70 + b"\r\n"
    reader, buf = feed_in([line] * 100 + [b".\r\nQUIT\r\n"], max_size=1000)
    assert buf == b"QUIT\r\n" and len(reader._body or b"") < 1000
    with pytest.raises(DataTooBig):
        reader.result()


@pytest.mark.parametrize("length, refused", [(998, False), (999, True)])
def test_text_line_limit(length: int, refused: bool) -> None:
    """1000 octets with the CRLF is the longest line (RFC 5321 4.5.3.1.6)."""
    reader, _ = feed_in([b"ok\r\n" + b"z" * length + b"\r\nok\r\n.\r\n"])
    if refused:
        with pytest.raises(DataLineTooLong):
            reader.result()
    else:
        assert len(reader.result()) == length + 10


def test_has_line_over_agrees_with_splitting_lines() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        lines = [b"x" * rng.choice([0, 1, 76, 997, 998, 999, 1000, 1001, 2100])
                 for _ in range(rng.randrange(0, 6))]
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        for limit in (MAX_TEXT_LINE - 1, 7, 1):
            longest = max(map(len, data.split(b"\n")))
            assert has_line_over(data, limit) == (longest > limit), ([len(x) for x in lines], limit)
