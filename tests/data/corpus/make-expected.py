#!/usr/bin/python3
"""Write expected/<rule file name>.kql: the exact query bytes of each
corpus rule, for the unit test of the rule loader (tests/unit/test_rule.c).

This is a second implementation, written apart from src/rule.c, so that a
bug in the C loader makes the test fail.  It reads only what the corpus
needs: the root key "query:" followed by a literal block scalar ("|",
"|-" or "|+"), following the YAML 1.2 rules for such a block:

* CRLF and lone CR line breaks become LF;
* the block's indentation is the indentation of its first non-blank line;
* the block ends before the first non-blank line indented less than that;
* the indentation is removed from every line, and any further spaces,
  tabs and trailing white space stay in the text;
* lines holding only spaces, no wider than the indentation, are empty;
* chomping: "|" keeps the line break after the last non-empty line,
  "|-" none, "|+" every trailing line break.  A file that ends without a
  line break gives the last line none.

One known defect is repaired first, as the loader does.  When the first
line of the block is indented more than the next non-blank line, and the
next line is still indented under the key, the first line is read at the
indentation of the next.  Its extra spaces are then not in the query.

Run from the project root with Debian's Python:
    /usr/bin/python3 tests/data/corpus/make-expected.py
"""

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RULES = os.path.join(HERE, "rules")
EXPECTED = os.path.join(HERE, "expected")

HEADER = re.compile(r"^query:[ ]+\|([+-]?)[ ]*$")


def indent_of(line):
    return len(line) - len(line.lstrip(" "))


def is_blank(line):
    return line.strip(" \t") == ""


def extract_query(name, data):
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    text = data.decode("utf-8")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    final_break = lines[-1] == ""
    if final_break:
        lines.pop()

    starts = [i for i, l in enumerate(lines) if HEADER.match(l)]
    if len(starts) != 1:
        sys.exit("%s: expected one 'query: |' line at column 0, found %d"
                 % (name, len(starts)))
    head = starts[0]
    chomp = HEADER.match(lines[head]).group(1)
    body = lines[head + 1:]

    content = [i for i, l in enumerate(body) if not is_blank(l)]
    if not content:
        sys.exit("%s: the query block is empty" % name)
    first = content[0]
    indent = indent_of(body[first])
    if len(content) > 1:
        following = indent_of(body[content[1]])
        if 0 < following < indent:
            print("%s: first query line re-indented from %d to %d"
                  % (name, indent, following))
            body[first] = body[first][indent - following:]
            indent = following

    block_lines = []
    for line in body:
        if not is_blank(line) and indent_of(line) < indent:
            break
        block_lines.append(line)
    # Only the file's last line can lack a line break.
    block_to_end = head + 1 + len(block_lines) == len(lines)

    out = []
    for line in block_lines:
        if is_blank(line) and len(line) <= indent and "\t" not in line:
            out.append("")
        else:
            out.append(line[indent:])

    trailing = 0
    while trailing < len(out) and out[len(out) - 1 - trailing] == "":
        trailing += 1
    content_lines = out[:len(out) - trailing]
    if chomp == "+":
        query = "\n".join(out)
        if final_break or not block_to_end:
            query += "\n"
    else:
        query = "\n".join(content_lines)
        last_has_break = trailing > 0 or final_break or not block_to_end
        if chomp == "" and last_has_break:
            query += "\n"
    return query.encode("utf-8")


def main():
    os.makedirs(EXPECTED, exist_ok=True)
    names = sorted(os.listdir(RULES))
    for name in names:
        with open(os.path.join(RULES, name), "rb") as f:
            query = extract_query(name, f.read())
        with open(os.path.join(EXPECTED, name + ".kql"), "wb") as f:
            f.write(query)
    print("wrote %d expected queries to %s" % (len(names), EXPECTED))


if __name__ == "__main__":
    main()
