"""Rewrite the generated parts of the docs from the code that computes them.

    python docs/generate.py                       # every doc that has a generated part
    python docs/generate.py docs/theory.md        # only these

A generated part sits between two marker lines,

    <!-- BEGIN GENERATED name by `command`; do not edit by hand -->
    ...
    <!-- END GENERATED name -->

where ``name`` is a key of ``GENERATORS`` and ``command`` prints the same text.
tests/test_docs.py fails when a part differs from what its generator returns today.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # this checkout's gpt2, whatever is installed

from gpt2 import worked_example as we  # noqa: E402

# name -> the function that writes that part; `python -m gpt2.worked_example --name` prints it.
GENERATORS = {"walkthrough": we.markdown, "sizes": we.sizes_markdown, "bpe": we.bpe_markdown}


def begin_mark(name):
    return f"<!-- BEGIN GENERATED {name} by `python -m gpt2.worked_example --{name}`; do not edit by hand -->"


def end_mark(name):
    return f"<!-- END GENERATED {name} -->"


def generated(text, name):
    """What lies between the marker lines of part ``name`` in ``text``."""
    try:
        return text.split(begin_mark(name) + "\n", 1)[1].split(end_mark(name), 1)[0]
    except IndexError:
        raise ValueError(f"no generated part {name!r} (markers {begin_mark(name)!r} ... {end_mark(name)!r})") from None


def parts(text):
    """Names of the generated parts in ``text``."""
    return [name for name in GENERATORS if begin_mark(name) in text]


def update(text):
    """``text`` with every generated part regenerated."""
    for name in parts(text):
        head, rest = text.split(begin_mark(name) + "\n", 1)
        _, tail = rest.split(end_mark(name), 1)
        text = f"{head}{begin_mark(name)}\n{GENERATORS[name]()}{end_mark(name)}{tail}"
    return text


def main(argv=None):
    paths = [Path(a) for a in (sys.argv[1:] if argv is None else argv)] or [p for p in DOCS if p.is_file()]
    for path in paths:
        text = path.read_text(encoding="utf-8")
        names = parts(text)
        if not names:
            if argv or sys.argv[1:]:
                print(f"{path}: no generated part", file=sys.stderr)
            continue
        new = update(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
        print(f"{path}: {'updated' if new != text else 'up to date'} ({', '.join(names)})", file=sys.stderr)


if __name__ == "__main__":
    main()
