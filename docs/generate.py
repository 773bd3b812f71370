"""Rewrite the generated parts of the docs from the code that computes them.

    python docs/generate.py                       # every doc that has a generated part
    python docs/generate.py docs/theory.md        # only these
    python docs/generate.py --show gelu_kernel    # print one part

A generated part sits between two marker lines,

    <!-- BEGIN GENERATED name by `command`; do not edit by hand -->
    ...
    <!-- END GENERATED name -->

where ``name`` is a key of ``GENERATORS`` and ``command`` prints the same text.
tests/test_docs.py fails when a part differs from what its generator returns today.
"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # this checkout's gpt2, whatever is installed

from bench import memory_sweep, roofline  # noqa: E402
from gpt2 import worked_example as we  # noqa: E402

# name -> the function that writes that part; `python -m gpt2.worked_example --name` prints it,
# unless COMMANDS names another command.
GENERATORS = {
    "walkthrough": we.markdown, "sizes": we.sizes_markdown, "bpe": we.bpe_markdown,
    "decode": we.decode_markdown, "training": we.training_markdown,
    "roofline": lambda: roofline.ridge_table() + "\n" + roofline.ops_table(),
}
COMMANDS = {"roofline": "python -m bench.roofline --table"}


def kernel_source(path, name):
    """The source of function ``name`` in ``path`` (decorators included), read without importing."""
    text = (ROOT / path).read_text(encoding="utf-8")
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            lines = text.splitlines()[node.decorator_list[0].lineno - 1 if node.decorator_list else node.lineno - 1:node.end_lineno]
            return "\n".join(lines)
    raise ValueError(f"{path} defines no function {name!r}")


def _gelu_kernel():
    return "```python\n# gpt2_kernels/gelu.py, as it is today\n" + kernel_source("gpt2_kernels/gelu.py", "_gelu_fwd_kernel") + "\n```\n"


GENERATORS["gelu_kernel"] = _gelu_kernel
COMMANDS["gelu_kernel"] = "python docs/generate.py --show gelu_kernel"
# The README's memory table, from the shipped run's bench/results/memory/memory.json.
GENERATORS["memory"] = memory_sweep.readme_markdown
COMMANDS["memory"] = "python docs/generate.py --show memory"


def begin_mark(name):
    command = COMMANDS.get(name, f"python -m gpt2.worked_example --{name}")
    return f"<!-- BEGIN GENERATED {name} by `{command}`; do not edit by hand -->"


def end_mark(name):
    return f"<!-- END GENERATED {name} -->"


def generated(text, name):
    """What lies between the marker lines of part ``name`` in ``text``."""
    _, begin, rest = text.partition(begin_mark(name) + "\n")
    body, end, _ = rest.partition(end_mark(name))
    if not (begin and end):
        raise ValueError(f"no generated part {name!r} (markers {begin_mark(name)!r} ... {end_mark(name)!r})")
    return body


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
    """Update each file; a file that cannot be (missing, not UTF-8 text, a marker without its
    pair) is one line on stderr, the others are still done, and the exit status is then 1.
    ``--show NAME`` prints one generated part instead."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--show"] and len(args) == 2 and args[1] in GENERATORS:
        sys.stdout.write(GENERATORS[args[1]]())
        return
    paths = [Path(a) for a in args] or [p for p in DOCS if p.is_file()]
    failed = 0
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
            for name in parts(text):
                generated(text, name)  # both markers, in order, or a ValueError naming them
        except (OSError, UnicodeDecodeError, ValueError) as e:
            print(f"{path}: error: {e}", file=sys.stderr)
            failed += 1
            continue
        names = parts(text)
        if not names:
            if args:
                print(f"{path}: no generated part", file=sys.stderr)
            continue
        new = update(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
        print(f"{path}: {'updated' if new != text else 'up to date'} ({', '.join(names)})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
